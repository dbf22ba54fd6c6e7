"""Plain-Python reference implementation of the feature spec: event-time windows with
bounded-out-of-orderness watermarks, evaluated one event at a time in arrival order.

It defines the semantics the Flink SQL and Beam compilations must reproduce:

* the watermark after an event is ``max(ts_ms) - watermark_delay_ms`` over events so far;
* an event is late for a group when ``ts_ms <= watermark - allowed_lateness_ms`` of that
  group on arrival; it then counts in none of that group's windows. An event late for at
  least one group is dead-lettered (reason ``late``, the groups named in its detail); it
  still counts in the groups it is not late for. A group's windows close (fire once, final)
  when the watermark reaches ``window_end + allowed_lateness_ms``, so none of its accepted
  events ever meets a closed window;
* an event without an entity id for a group (the user x item-category pair of an event
  whose ``item_category`` is null) is left out of that group (``spec.entity_key``);
* tumbling windows are ``[k*size, (k+1)*size)``; hopping windows of ``size``/``slide``
  are ``[k*slide, k*slide + size)``;
* session windows (``gap``) are per entity: its accepted events sorted by ``ts_ms``, an
  event joins the current session when ``ts_ms < last ts_ms of the session + gap``, else
  opens a new one; the window is ``[first ts_ms, last ts_ms + gap)``, keyed by its start.
  (An accepted event has ``ts_ms > watermark``, so it never extends a session whose end
  the watermark has reached: this equals merging windows that fire at the watermark.)
* model input rows exist where every scoring group has a window ending at the same time
  for the entity.

>>> from transforms.codecs import make_event
>>> from transforms.spec import load_spec
>>> evs = [make_event("a", "u1", "i1", 1000, "impression"), make_event("b", "u1", "i1", 1500, "click")]
>>> out = compute_features(load_spec(), evs)
>>> out.groups["user_tumble_10s"][("u1", 0)]["ctr"]
1.0
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from transforms.aggregates import Acc, GroupAggregator
from transforms.spec import FeatureGroup, FeatureSpec, Window

WindowKey = tuple[str, int]  # (entity_id, window_start_ms)


def window_starts(window: Window, ts_ms: int) -> list[int]:
    """Starts of every window containing ``ts_ms``, oldest first (tumbling/hopping only:
    session windows depend on the entity's other events, see :func:`sessions`).

    >>> window_starts(Window("hopping", 30000, 10000), 25000)
    [0, 10000, 20000]
    """
    if not window.aligned:
        raise ValueError(f"{window.kind} windows have no fixed starts")
    step = window.step_ms
    last = ts_ms - ts_ms % step
    return list(range(last - window.size_ms + step, last + 1, step))


def sessions(ts_ms: Iterable[int], gap_ms: int) -> list[tuple[int, int]]:
    """``(start, end)`` of the session windows of one entity's accepted timestamps (an
    event exactly ``gap_ms`` after the last one opens a new session).

    >>> sessions([5_000, 0, 40_000, 29_999, 70_000], 30_000)
    [(0, 70000), (70000, 100000)]
    """
    out: list[tuple[int, int]] = []
    for ts in sorted(ts_ms):
        if out and ts < out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], ts + gap_ms))
        else:
            out.append((ts, ts + gap_ms))
    return out


def arrival_watermarks(events: Iterable[dict[str, Any]], watermark_delay_ms: int) -> Iterator[tuple[dict[str, Any], int | None]]:
    """Yield ``(event, watermark on its arrival)`` in arrival order (None before any event).

    >>> [wm for _, wm in arrival_watermarks([{"ts_ms": 5000}, {"ts_ms": 3000}, {"ts_ms": 9000}], 2000)]
    [None, 3000, 3000]
    """
    watermark: int | None = None
    for ev in events:
        yield ev, watermark
        cand = ev["ts_ms"] - watermark_delay_ms
        if watermark is None or cand > watermark:
            watermark = cand


def mark_late(events: Iterable[dict[str, Any]], watermark_delay_ms: int) -> Iterator[tuple[dict[str, Any], bool]]:
    """Yield ``(event, is_late)`` in arrival order under the watermark rule above (for a
    group with no allowed lateness)."""
    for ev, watermark in arrival_watermarks(events, watermark_delay_ms):
        yield ev, watermark is not None and ev["ts_ms"] <= watermark


def late_groups(spec: FeatureSpec, watermark_ms: int | None, ts_ms: int) -> tuple[str, ...]:
    """Names of the groups an event at ``ts_ms`` is late for, arriving when the spec
    watermark is ``watermark_ms`` (None: no event yet).

    >>> from transforms.spec import load_spec
    >>> spec = load_spec()
    >>> late_groups(spec, 10_000, 9_000) == tuple(g.name for g in spec.groups if g.allowed_lateness_ms < 1_000)
    True
    >>> late_groups(spec, 10_000, 10_001), late_groups(spec, None, 0)
    ((), ())
    """
    if watermark_ms is None or ts_ms > watermark_ms:
        return ()
    return tuple(g.name for g in spec.groups if ts_ms <= watermark_ms - g.allowed_lateness_ms)


def mark_late_groups(spec: FeatureSpec, events: Iterable[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], tuple[str, ...]]]:
    """Yield ``(event, late_groups)`` in arrival order under the rule above."""
    for ev, watermark in arrival_watermarks(events, spec.watermark_delay_ms):
        yield ev, late_groups(spec, watermark, ev["ts_ms"])


@dataclass
class FeatureOutput:
    """Per group: ``{(entity_id, window_start_ms): {feature: value}}``; plus the events
    late for at least one group (``late``; ``accepted`` counts those late for none)."""

    groups: dict[str, dict[WindowKey, dict[str, float]]] = field(default_factory=dict)
    late: list[dict[str, Any]] = field(default_factory=list)
    accepted: int = 0
    # session groups only: the window end of each session, ``{(entity_id, start): end}``
    session_ends: dict[str, dict[WindowKey, int]] = field(default_factory=dict)


class GroupWindower:
    """Keyed window state of one group; the reference's unit of work."""

    def __init__(self, group: FeatureGroup) -> None:
        self.group = group
        self.agg = GroupAggregator(group)
        self.state: dict[WindowKey, Acc] = {}
        self.ends: dict[WindowKey, int] = {}
        self._pending: dict[str, list[tuple[int, int, dict[str, Any]]]] = {}  # sessions: (ts, seq, event)

    def add(self, ev: dict[str, Any], seq: int) -> None:
        key = self.group.key(ev)
        if key is None:
            return
        if not self.group.window.aligned:
            self._pending.setdefault(key, []).append((ev["ts_ms"], seq, ev))
            return
        for start in window_starts(self.group.window, ev["ts_ms"]):
            acc = self.state.get((key, start))
            if acc is None:
                acc = self.state[(key, start)] = self.agg.create()
            self.agg.add(acc, ev, seq)

    def _sessionize(self) -> None:
        """Session groups: fold each entity's events, in ``ts_ms`` order, into its sessions
        (each keeps its arrival ``seq``, as for the other windows)."""
        gap = self.group.window.gap_ms or 0
        for key, items in self._pending.items():
            items.sort(key=lambda t: (t[0], t[1]))
            spans = iter(sessions((t[0] for t in items), gap))
            start, end = next(spans)
            acc = self.state[(key, start)] = self.agg.create()
            self.ends[(key, start)] = end
            for ts, seq, ev in items:
                if ts >= end:
                    start, end = next(spans)
                    acc = self.state[(key, start)] = self.agg.create()
                    self.ends[(key, start)] = end
                self.agg.add(acc, ev, seq)
        self._pending.clear()

    def results(self) -> dict[WindowKey, dict[str, float]]:
        self._sessionize()
        return {k: self.agg.result(acc) for k, acc in sorted(self.state.items(), key=lambda kv: (kv[0][1], kv[0][0]))}


def compute_features(spec: FeatureSpec, events: Iterable[dict[str, Any]]) -> FeatureOutput:
    """Run every group of ``spec`` over valid, decoded ``events`` (arrival order)."""
    windowers = [GroupWindower(g) for g in spec.groups]
    out = FeatureOutput()
    for seq, (ev, late) in enumerate(mark_late_groups(spec, events)):
        if late:
            out.late.append(ev)
        else:
            out.accepted += 1
        for w in windowers:
            if w.group.name not in late:
                w.add(ev, seq)
    out.groups = {w.group.name: w.results() for w in windowers}
    out.session_ends = {w.group.name: w.ends for w in windowers if not w.group.window.aligned}
    return out


def model_rows(spec: FeatureSpec, out: FeatureOutput) -> list[tuple[str, int, int, list[float]]]:
    """Model input rows ``(entity_id, window_start_ms, window_end_ms, vector)`` of the
    scoring groups, joined on entity and window end; ``window_start_ms`` is that of the
    first scoring group. Sorted by window end, then entity."""
    first, *rest = spec.scoring_groups
    by_end: list[dict[tuple[str, int], tuple[int, dict[str, float]]]] = []
    for name in spec.scoring_groups:
        size = spec.group(name).window.size_ms
        by_end.append({(k, s + size): (s, v) for (k, s), v in out.groups[name].items()})
    rows = []
    for (key, end), (start, vals) in by_end[0].items():
        vec = list(vals.values())
        for other in by_end[1:]:
            hit = other.get((key, end))
            if hit is None:
                break
            vec.extend(hit[1].values())
        else:
            rows.append((key, start, end, vec))
    rows.sort(key=lambda r: (r[2], r[0]))
    return rows
