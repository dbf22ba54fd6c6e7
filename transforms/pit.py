"""Point-in-time-correct training rows from the reference feature semantics.

A row ``(user, window_end_ms)`` exists where every scoring group has a window ending at
``window_end_ms`` for the user (as in :func:`transforms.reference.model_rows`). Its
features come only from those windows, so only from events with ``ts_ms < window_end_ms``;
its label is "the user clicks in ``[window_end_ms, window_end_ms + step)``".

Events pass the serving watermark rule first (:func:`accepted_events`): lateness depends
on arrival order, exactly as online. :func:`pit_rows` is then a pure event-time function
of the accepted events.

>>> from transforms.codecs import make_event
>>> from transforms.spec import load_spec
>>> evs = [make_event("a", "u1", "i1", 1_000, "impression"), make_event("b", "u1", "i1", 12_000, "click")]
>>> [(r["window_end_ms"], r["label"], r["user_tumble_10s.impressions"]) for r in pit_dataset(load_spec(), evs)]
[(10000, 1, 1.0), (20000, 0, 0.0)]
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from transforms.reference import FeatureOutput, GroupWindower, mark_late_groups, model_rows
from transforms.spec import FeatureSpec

Row = dict[str, Any]
ID_COLUMNS = ("user_id", "window_end_ms", "label")


def label_step_ms(spec: FeatureSpec) -> int:
    """Length of the label window: the common emit step of the scoring groups."""
    return spec.group(spec.scoring_groups[0]).window.step_ms


def accepted_events(spec: FeatureSpec, events: Iterable[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """``(seq, event)`` of the events not late for the scoring groups (which share one
    allowed lateness; ``seq`` = arrival index, late ones included)."""
    first = spec.scoring_groups[0]
    return [(seq, ev) for seq, (ev, late) in enumerate(mark_late_groups(spec, events)) if first not in late]


def make_row(spec: FeatureSpec, user_id: str, window_end_ms: int, label: int, vector: Iterable[float]) -> Row:
    """One dataset row: id columns, then the model features in ``spec.model_feature_names`` order."""
    row: Row = {"user_id": user_id, "window_end_ms": int(window_end_ms), "label": int(label)}
    values = [float(v) for v in vector]
    names = spec.model_feature_names
    if len(values) != len(names):
        raise ValueError(f"feature vector has {len(values)} values, spec has {len(names)} model features")
    row.update(zip(names, values, strict=True))
    return row


def pit_rows(spec: FeatureSpec, accepted: Iterable[tuple[int, dict[str, Any]]]) -> list[Row]:
    """Rows from already accepted ``(seq, event)``, sorted by ``(window_end_ms, user_id)``."""
    accepted = list(accepted)
    windowers = [GroupWindower(spec.group(name)) for name in spec.scoring_groups]
    first = windowers[0].group
    clicks: dict[str, list[int]] = defaultdict(list)
    for seq, ev in accepted:
        for w in windowers:
            w.add(ev, seq)
        key = first.key(ev)
        if ev["event_type"] == "click" and key is not None:
            clicks[key].append(int(ev["ts_ms"]))
    for ts in clicks.values():
        ts.sort()
    step = label_step_ms(spec)
    out = FeatureOutput(groups={w.group.name: w.results() for w in windowers})
    rows = []
    for key, _start, end, vec in model_rows(spec, out):
        ts = clicks.get(key, [])
        j = bisect.bisect_left(ts, end)
        rows.append(make_row(spec, key, end, int(j < len(ts) and ts[j] < end + step), vec))
    return rows


def pit_dataset(spec: FeatureSpec, events: Iterable[dict[str, Any]]) -> list[Row]:
    """Point-in-time rows from decoded events in arrival order (late events dropped)."""
    return pit_rows(spec, accepted_events(spec, events))


def sort_rows(rows: Iterable[Row]) -> list[Row]:
    return sorted(rows, key=lambda r: (r["window_end_ms"], r["user_id"]))


def _canon(value: Any) -> Any:
    # 12 significant digits: Beam may sum floats in another order than the reference
    return float(f"{value:.12g}") if isinstance(value, float) else value


def dataset_fingerprint(rows: Iterable[Row]) -> str:
    """sha256 (16 hex) of the rows' content, independent of row and key order."""
    h = hashlib.sha256()
    for row in sort_rows(rows):
        canon = {k: _canon(v) for k, v in row.items()}
        h.update(json.dumps(canon, sort_keys=True, separators=(",", ":")).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def time_range(rows: Iterable[Row]) -> list[int] | None:
    """``[min, max]`` of the rows' ``window_end_ms``; ``None`` when there are none."""
    ends = [int(r["window_end_ms"]) for r in rows]
    return [min(ends), max(ends)] if ends else None
