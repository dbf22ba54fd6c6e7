"""The ``streamscore report`` page in headless Chromium: no console errors, and every
chart (``svg.chart``) plotted with data points and marks after the page's JavaScript ran.

Chromium runs with ``--dump-dom`` (the DOM serialised after the load event, so after the
page's scripts) and ``--enable-logging=stderr``, which logs every console message and
uncaught exception of the page as a ``...:CONSOLE...] "message", source: URL (line)``
line on stderr. Chromium 156 tags every console level ``INFO``, so a level cannot be
told apart: the report page must be console-silent and any console line fails it. A
deliberately broken page (an uncaught exception and a ``console.error``) and the report
with a broken script show that the check does catch errors.

Chromium comes from Debian (``apt-get install -y chromium``, done by ``make install``);
without it these tests fail, they do not skip. ``STREAMSCORE_CHROMIUM`` names another binary.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from jobs import report as report_cli
from tests.unit.test_report import Page, parse_page, synthetic_inputs

pytestmark = pytest.mark.browser

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0")
# [pid:tid:date/time:LEVEL:CONSOLE(line)] or, in newer builds, [...:LEVEL:CONSOLE:line]
CONSOLE = re.compile(r"^\[[^\]]*:CONSOLE\b[^\]]*\]\s?(?P<msg>.*)$")
TIMEOUT_S = 120


def chromium() -> str:
    path = os.environ.get("STREAMSCORE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path and os.path.exists("/usr/bin/chromium"):
        path = "/usr/bin/chromium"
    if not path:
        pytest.fail("headless Chromium is not installed (no `chromium` on PATH, no /usr/bin/chromium): "
                    "install it with `apt-get install -y chromium` (the Makefile's install target does) "
                    "or set STREAMSCORE_CHROMIUM to a Chromium binary")
    return path


@dataclass(frozen=True)
class Loaded:
    dom: str  # the DOM after the page's scripts ran
    console: list[str]  # console messages and uncaught errors of the page
    stderr: str


def load(page: Path, scratch: Path) -> Loaded:
    """Load ``page`` in headless Chromium with a fresh profile."""
    profile = scratch / f"profile-{page.stem}"
    profile.mkdir(parents=True, exist_ok=True)
    cmd = [chromium(), *FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.resolve().as_uri()]
    env = {**os.environ, "HOME": str(profile)}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"Chromium did not finish loading {page} in {TIMEOUT_S}s: {exc}")
    assert proc.returncode == 0, f"Chromium exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    assert "<html" in proc.stdout.lower(), f"Chromium dumped no DOM:\n{proc.stderr[-4000:]}"
    console = [m.group("msg") for m in map(CONSOLE.match, proc.stderr.splitlines()) if m]
    return Loaded(proc.stdout, console, proc.stderr)


def chart_problems(page: Page) -> list[str]:
    """Why the page's charts are not all plotted (empty when they are)."""
    problems = [] if page.charts else ["no svg.chart in the page"]
    for c in page.charts:
        name, points = c["attrs"].get("data-name"), c["attrs"].get("data-points")
        if not (points or "").isdigit() or int(points or 0) <= 0:
            problems.append(f"chart {name!r}: data-points={points!r}")
        if not page.marks(c):
            problems.append(f"chart {name!r}: no .mark element")
    return problems


def assert_clean_report(loaded: Loaded, expected: dict[str, int]) -> None:
    """No console output; every chart plotted; the page's script ran over every chart."""
    assert loaded.console == [], f"console messages: {loaded.console}"
    page = parse_page(loaded.dom)
    assert chart_problems(page) == []
    assert {c["attrs"]["data-name"]: int(c["attrs"]["data-points"]) for c in page.charts} == expected
    assert page.body.get("data-js") == "ok", "the page's script did not run to its end"
    assert page.summary_items == len(page.charts)


def build_report(tmp_path: Path) -> Path:
    """The report of synthetic inputs in which every chart kind has data."""
    reg = synthetic_inputs(tmp_path / "in")
    html = tmp_path / "report.html"
    args = ["--from-jsonl", str(tmp_path / "in"), "--out", str(html), "--registry", str(reg)]
    assert report_cli.main(args) == 0
    return html


def test_report_page_in_chromium(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    html = build_report(tmp_path)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    kinds = {name.split(" ")[0] for name in summary["charts"]}
    assert kinds == {"throughput", "latency", "psi", "score_distribution", "fairness", "alerts"}
    assert all(n > 0 for n in summary["charts"].values()), summary
    loaded = load(html, tmp_path)
    assert_clean_report(loaded, summary["charts"])
    page = parse_page(loaded.dom)
    psi = next(c for c in page.charts if c["attrs"]["data-name"] == "psi")
    assert sorted(float(t["data-value"]) for t in page.thresholds(psi)) == [0.1, 0.25]


def test_the_check_catches_a_broken_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.html"
    broken.write_text("<!doctype html><html><body><svg class='chart' data-name='empty' data-points='0'>"
                      "<text class='title'>empty</text></svg>\n"
                      "<script>console.error('deliberate console error');</script>\n"
                      "<script>undefinedFunctionForTheTest();</script></body></html>\n")
    loaded = load(broken, tmp_path)
    assert any("deliberate console error" in m for m in loaded.console), loaded.stderr[-4000:]
    assert any("Uncaught ReferenceError" in m and "undefinedFunctionForTheTest" in m for m in loaded.console)
    assert chart_problems(parse_page(loaded.dom)) == ["chart 'empty': data-points='0'", "chart 'empty': no .mark element"]
    with pytest.raises(AssertionError, match="console messages"):
        assert_clean_report(loaded, {"empty": 0})

    # the real report with its script broken half-way fails the same check
    html = build_report(tmp_path)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    text = html.read_text()
    anchor = "document.getElementById('chart-total')"
    assert anchor in text
    html.write_text(text.replace(anchor, "document.getElementById('no-such-element').missing.x = 1;\n  " + anchor))
    loaded = load(html, tmp_path)
    assert any("Uncaught TypeError" in m for m in loaded.console), loaded.console
    with pytest.raises(AssertionError):
        assert_clean_report(loaded, summary["charts"])

    # and a silent page passes it: the check is not tripped by Chromium's own log noise
    quiet = tmp_path / "quiet.html"
    quiet.write_text("<!doctype html><html><body><svg class='chart' data-name='one' data-points='1'>"
                     "<circle class='mark' cx='1' cy='1' r='1'></circle></svg><ul id='s'></ul><script>"
                     "var li = document.createElement('li'); li.className = 'chart-count';"
                     "document.getElementById('s').appendChild(li); document.body.setAttribute('data-js', 'ok');"
                     "</script></body></html>\n")
    assert_clean_report(load(quiet, tmp_path), {"one": 1})
