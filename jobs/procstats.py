"""CPU seconds and peak resident memory of process trees, sampled from /proc."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d.name))
    return kids


def descendants(root: int) -> list[int]:
    kids = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def _sample(pid: int) -> tuple[float, int, str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / _TICKS
        rss_kb = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        return cpu, rss_kb, name
    except (OSError, ValueError, IndexError):
        return None


def rss_mb(pids: list[int]) -> dict[int, tuple[str, float]]:
    """``pid -> (command name, resident memory in MiB)`` of the pids still alive."""
    out = {}
    for pid in pids:
        s = _sample(pid)
        if s is not None:
            out[pid] = (s[2], s[1] / 1024)
    return out


@dataclass
class TreeStats:
    cpu_s: dict[int, float] = field(default_factory=dict)
    peak_rss_mb: dict[int, float] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    # (wall-clock seconds, CPU seconds of the whole tree so far) at every sample
    series: list[tuple[float, float]] = field(default_factory=list)

    def cpu_at(self, wall_s: float) -> float | None:
        """The tree's CPU seconds at ``wall_s``, interpolated between samples (None outside them)."""
        pts = self.series
        if not pts or wall_s < pts[0][0] or wall_s > pts[-1][0]:
            return None
        for (t0, c0), (t1, c1) in zip(pts, pts[1:], strict=False):
            if t0 <= wall_s <= t1:
                return c0 if t1 == t0 else c0 + (c1 - c0) * (wall_s - t0) / (t1 - t0)
        return pts[-1][1]

    @property
    def total_cpu_s(self) -> float:
        return sum(self.cpu_s.values())

    def peak_rss_by_process(self) -> dict[str, float]:
        """Peak RSS (MiB) per process, labelled ``<comm>:<pid>``."""
        return {f"{self.names.get(p, '?')}:{p}": round(v, 1) for p, v in sorted(self.peak_rss_mb.items())}


class TreeSampler:
    """Samples the process trees under ``roots`` every ``interval_s`` until stopped."""

    def __init__(self, roots: list[int], interval_s: float = 0.5) -> None:
        self.roots = roots
        self.interval_s = interval_s
        self.stats = TreeStats()
        self._base: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> TreeSampler:
        for root in self.roots:  # CPU already spent before the window is not counted
            for pid in descendants(root):
                s = _sample(pid)
                if s:
                    self._base[pid] = s[0]
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._once()

    def _once(self) -> None:
        for root in self.roots:
            for pid in descendants(root):
                s = _sample(pid)
                if s is None:
                    continue
                cpu, rss_kb, name = s
                self.stats.cpu_s[pid] = cpu - self._base.get(pid, 0.0)
                self.stats.peak_rss_mb[pid] = max(self.stats.peak_rss_mb.get(pid, 0.0), rss_kb / 1024)
                self.stats.names[pid] = name
        self.stats.series.append((time.time(), self.stats.total_cpu_s))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._once()
            time.sleep(self.interval_s)
