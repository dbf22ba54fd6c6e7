"""Record-by-record delivery check: did an output stream carry every expected record
exactly once? Used by the fault-injection harness, the broker-restart and the
savepoint-rescale tests.

Records are told apart by their identity (which window of which entity, which arm),
not by position, so two runs that interleave differently still compare.

>>> want = [{"feature_group": "g", "entity_id": "u1", "window_start_ms": 0, "window_end_ms": 10,
...          "features": {"n": 1.0}}]
>>> got = want + want
>>> r = check(want, got, snapshot_identity, snapshot_values)
>>> (r.expected, r.lost, r.duplicated, r.unexpected, r.value_mismatches)
(1, 0, 1, 0, 0)
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Record = Mapping[str, Any]
Identity = Callable[[Record], Hashable]
Values = Callable[[Record], Mapping[str, float]]


def score_identity(v: Record) -> Hashable:
    """One score per user, window and arm (``shadow`` scores are their own arm)."""
    return (v["user_id"], v["window_start_ms"], v["window_end_ms"], v["arm"])


def snapshot_identity(v: Record) -> Hashable:
    """One snapshot per feature group, entity and window."""
    return (v["feature_group"], v["entity_id"], v["window_start_ms"], v["window_end_ms"])


def dead_letter_identity(v: Record) -> Hashable:
    """One dead letter per source record."""
    return (v["source_topic"], v["source_partition"], v["source_offset"], v["reason"])


def snapshot_values(v: Record) -> Mapping[str, float]:
    return v["features"]  # type: ignore[no-any-return]


def no_values(v: Record) -> Mapping[str, float]:
    return {}


@dataclass
class DeliveryReport:
    """``lost``: expected identities never seen; ``duplicated``: extra copies of seen
    identities; ``unexpected``: identities not expected; ``value_mismatches``: records
    whose values differ from the expected ones (relative 1e-9)."""

    expected: int = 0
    seen: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    value_mismatches: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, other: DeliveryReport) -> DeliveryReport:
        return DeliveryReport(self.expected + other.expected, self.seen + other.seen, self.lost + other.lost,
                              self.duplicated + other.duplicated, self.unexpected + other.unexpected,
                              self.value_mismatches + other.value_mismatches, (self.examples + other.examples)[:10])

    def as_dict(self) -> dict[str, Any]:
        return {"expected": self.expected, "seen": self.seen, "lost": self.lost, "duplicated": self.duplicated,
                "unexpected": self.unexpected, "value_mismatches": self.value_mismatches, "examples": self.examples}


def _close(a: float, b: float) -> bool:
    return a == b or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def check(expected: Iterable[Record], seen: Iterable[Record], identity: Identity,
          values: Values = no_values) -> DeliveryReport:
    """Compare ``seen`` against ``expected`` (each expected identity once)."""
    want: dict[Hashable, Record] = {}
    for v in expected:
        want[identity(v)] = v
    counts: Counter[Hashable] = Counter()
    rep = DeliveryReport(expected=len(want))
    for v in seen:
        key = identity(v)
        counts[key] += 1
        rep.seen += 1
        if counts[key] > 1:
            continue
        w = want.get(key)
        if w is None:
            continue
        wv, gv = values(w), values(v)
        if wv.keys() != gv.keys() or not all(_close(wv[k], gv[k]) for k in wv):
            rep.value_mismatches += 1
            if len(rep.examples) < 10:
                rep.examples.append(f"values of {key}: want {dict(wv)} got {dict(gv)}")
    rep.duplicated = sum(n - 1 for n in counts.values() if n > 1)
    rep.lost = sum(1 for k in want if k not in counts)
    rep.unexpected = sum(1 for k in counts if k not in want)
    for kind, keys in (("lost", [k for k in want if k not in counts]),
                       ("duplicated", [k for k, n in counts.items() if n > 1]),
                       ("unexpected", [k for k in counts if k not in want])):
        rep.examples += [f"{kind}: {k}" for k in keys[: max(0, 10 - len(rep.examples))]]
    return rep
