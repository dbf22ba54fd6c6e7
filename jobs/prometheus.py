"""Reading a Prometheus endpoint: the text exposition format parsed into
``{sample name: [(labels, value), ...]}`` (no client library), and lookups over it.

>>> s = parse_text('# TYPE x gauge\\nx{a="1"} 2.0\\nx{a="2"} 3\\n')
>>> total(s, "x"), select(s, "x", a="2")
(5.0, [({'a': '2'}, 3.0)])
"""

from __future__ import annotations

import math
import re
import urllib.request

from jobs.metrics import GAUGE_SCALE

Samples = dict[str, list[tuple[dict[str, str], float]]]

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


def _parse_value(text: str) -> float:
    t = text.strip()
    low = t.lower()
    if low in ("+inf", "inf"):
        return math.inf
    if low == "-inf":
        return -math.inf
    if low == "nan":
        return math.nan
    return float(t)


def _parse_labels(line: str, i: int) -> tuple[dict[str, str], int]:
    """Labels from ``line[i] == '{'``; returns them and the index after ``}``."""
    labels: dict[str, str] = {}
    i += 1
    n = len(line)
    while True:
        while i < n and line[i] in " \t,":
            i += 1
        if i >= n:
            raise ValueError(f"unterminated label set: {line!r}")
        if line[i] == "}":
            return labels, i + 1
        m = _NAME.match(line, i)
        if not m:
            raise ValueError(f"bad label name at {i}: {line!r}")
        key = m.group(0)
        i = m.end()
        while i < n and line[i] in " \t":
            i += 1
        if i + 1 >= n or line[i] != "=" or line[i + 1] != '"':
            raise ValueError(f"bad label {key!r}: {line!r}")
        i += 2
        buf = []
        while True:
            if i >= n:
                raise ValueError(f"unterminated label value: {line!r}")
            c = line[i]
            if c == "\\" and i + 1 < n:
                buf.append(_ESCAPES.get(line[i + 1], "\\" + line[i + 1]))
                i += 2
            elif c == '"':
                i += 1
                break
            else:
                buf.append(c)
                i += 1
        labels[key] = "".join(buf)


def parse_text(text: str) -> Samples:
    """Parse the Prometheus text exposition format (0.0.4) into
    ``{sample_name: [(labels, value), ...]}``; comments (``# HELP``/``# TYPE``) are
    skipped, sample names are as exposed (a summary's ``x_count`` stays ``x_count``),
    timestamps are dropped, ``NaN``/``+Inf``/``-Inf`` become floats."""
    out: Samples = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _NAME.match(line)
        if not m:
            raise ValueError(f"bad sample line: {raw!r}")
        name = m.group(0)
        i = m.end()
        labels: dict[str, str] = {}
        if i < len(line) and line[i] == "{":
            labels, i = _parse_labels(line, i)
        parts = line[i:].split()
        if not parts:
            raise ValueError(f"sample without a value: {raw!r}")
        out.setdefault(name, []).append((labels, _parse_value(parts[0])))
    return out


def scrape(port: int, timeout_s: float = 5, host: str = "127.0.0.1") -> Samples:
    """GET ``http://host:port/metrics`` and parse it (:func:`parse_text`); raises
    ``OSError`` when nothing listens there (e.g. the mini-cluster is gone)."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout_s) as resp:
        return parse_text(resp.read().decode("utf-8", errors="replace"))


def select(samples: Samples, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """The samples of ``name`` whose labels include ``labels``."""
    return [(lab, v) for lab, v in samples.get(name, []) if all(lab.get(k) == w for k, w in labels.items())]


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of :func:`select` (e.g. a counter over subtasks); 0.0 when absent."""
    return float(sum(v for _, v in select(samples, name, **labels) if not math.isnan(v)))


def unscale(value: float) -> float:
    """A ``*_ppm`` gauge back to its float value."""
    return value / GAUGE_SCALE


