"""Incremental event-time windowing over the reference semantics: add events in arrival
order, and fire each window once the watermark reaches its end plus the group's allowed
lateness (``watermark - allowed_lateness_ms >= end - 1``); an event late for some groups
still counts in the others;
session windows merge per entity as events arrive and fire the same way. Used by the plain-Python
peer of the benchmark; ``reference.compute_features`` is its batch twin, and a unit test
shows the two agree.

>>> from transforms.codecs import make_event
>>> from transforms.spec import load_spec
>>> w = StreamingFeatures(load_spec())
>>> w.add(make_event("a", "u1", "i1", 1_000, "click"))
True
>>> w.add(make_event("b", "u1", "i1", 13_000, "impression"))
True
>>> [(f.group, f.entity_id, f.window_end_ms) for f in w.fired() if f.group == "user_tumble_10s"]
[('user_tumble_10s', 'u1', 10000)]
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

from transforms.aggregates import Acc, GroupAggregator
from transforms.reference import late_groups, window_starts
from transforms.spec import FeatureGroup, FeatureSpec


@dataclass(frozen=True)
class FiredWindow:
    group: str
    entity_id: str
    window_start_ms: int
    window_end_ms: int
    features: dict[str, float]


@dataclass
class _Session:
    start: int
    end: int  # last ts_ms + gap
    acc: Acc


class StreamingFeatures:
    """All groups of a spec, fired by a bounded-out-of-orderness watermark."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self.aggs = {g.name: GroupAggregator(g) for g in spec.groups}
        self.state: dict[str, dict[tuple[str, int], Acc]] = {g.name: {} for g in spec.groups}
        # session groups: the open sessions of each entity (disjoint, few per entity)
        self.sessions: dict[str, dict[str, list[_Session]]] = {
            g.name: {} for g in spec.groups if not g.window.aligned}
        # (end + allowed lateness, group, entity, start); sessions: may be stale
        self.timers: list[tuple[int, str, str, int]] = []
        self.lateness_ms = {g.name: g.allowed_lateness_ms for g in spec.groups}
        self.watermark: int | None = None
        self.seq = 0
        self.late = 0

    def add(self, ev: dict[str, Any]) -> bool:
        """Fold one valid event in; False when it is late for at least one group (it is
        still added to the others)."""
        ts = ev["ts_ms"]
        seq = self.seq
        self.seq += 1
        late = late_groups(self.spec, self.watermark, ts)
        for g in self.spec.groups:
            key = g.key(ev)
            if key is None or g.name in late:
                continue
            if not g.window.aligned:
                self._add_session(g, key, ev, seq)
                continue
            st = self.state[g.name]
            agg = self.aggs[g.name]
            for start in window_starts(g.window, ts):
                acc = st.get((key, start))
                if acc is None:
                    acc = st[(key, start)] = agg.create()
                    heapq.heappush(self.timers, (start + g.window.size_ms + g.allowed_lateness_ms, g.name, key, start))
                agg.add(acc, ev, seq)
        cand = ts - self.spec.watermark_delay_ms
        if self.watermark is None or cand > self.watermark:
            self.watermark = cand
        if late:
            self.late += 1
            return False
        return True

    def _add_session(self, g: FeatureGroup, key: str, ev: dict[str, Any], seq: int) -> None:
        """Merge the event's window ``[ts, ts + gap)`` with every open session of ``key``
        it overlaps; a changed session gets a new timer (its old one goes stale)."""
        ts, gap, agg = ev["ts_ms"], g.window.gap_ms or 0, self.aggs[g.name]
        open_ = self.sessions[g.name].setdefault(key, [])
        hits = [s for s in open_ if s.start < ts + gap and ts < s.end]
        if len(hits) == 1 and hits[0].start <= ts and ts + gap <= hits[0].end:
            agg.add(hits[0].acc, ev, seq)  # inside a session: its bounds stay
            return
        acc = agg.create()
        agg.add(acc, ev, seq)
        merged = _Session(ts, ts + gap, acc)
        for s in hits:
            open_.remove(s)
            merged = _Session(min(merged.start, s.start), max(merged.end, s.end), agg.merge(merged.acc, s.acc))
        open_.append(merged)
        heapq.heappush(self.timers, (merged.end + g.allowed_lateness_ms, g.name, key, merged.start))

    def _pop_session(self, group: str, key: str, start: int, end: int) -> Acc | None:
        """The open session ``[start, end)`` of ``key``, removed; None for a stale timer."""
        open_ = self.sessions[group].get(key, [])
        for s in open_:
            if s.start == start and s.end == end:
                open_.remove(s)
                if not open_:
                    del self.sessions[group][key]
                return s.acc
        return None

    def fired(self, final: bool = False) -> list[FiredWindow]:
        """Windows whose end the watermark has reached (all of them with ``final``)."""
        out = []
        wm = self.watermark if self.watermark is not None else -(2**63)
        while self.timers and (final or self.timers[0][0] - 1 <= wm):
            fire_at, group, key, start = heapq.heappop(self.timers)
            end = fire_at - self.lateness_ms[group]
            if group in self.sessions:
                acc = self._pop_session(group, key, start, end)
                if acc is None:
                    continue
            else:
                acc = self.state[group].pop((key, start))
            out.append(FiredWindow(group, key, start, end, self.aggs[group].result(acc)))
        return out


def join_scoring(spec: FeatureSpec, fired: list[FiredWindow]) -> list[tuple[str, int, int, list[float]]]:
    """Model input rows among ``fired`` windows: scoring groups joined on entity and end."""
    by_group: dict[str, dict[tuple[str, int], FiredWindow]] = {g: {} for g in spec.scoring_groups}
    for f in fired:
        if f.group in by_group:
            by_group[f.group][(f.entity_id, f.window_end_ms)] = f
    first, *rest = spec.scoring_groups
    rows = []
    for (key, end), f in by_group[first].items():
        parts = [by_group[g].get((key, end)) for g in rest]
        if all(p is not None for p in parts):
            vec = list(f.features.values())
            for p in parts:
                vec.extend(p.features.values())  # type: ignore[union-attr]
            rows.append((key, f.window_start_ms, end, vec))
    return rows
