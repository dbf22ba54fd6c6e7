"""Reads the job's output topics back and summarises them (counts, latency)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jobs.kafka_io import read_topic
from transforms.codecs import decode
from transforms.dead_letters import decode_dead_letter


@dataclass
class Outputs:
    scores: list[tuple[bytes | None, dict[str, Any], int]] = field(default_factory=list)
    snapshots: list[tuple[bytes | None, dict[str, Any], int]] = field(default_factory=list)
    dead_letters: list[tuple[bytes | None, dict[str, Any], int]] = field(default_factory=list)

    def dead_letter_reasons(self) -> dict[str, int]:
        return dict(Counter(d["reason"] for _, d, _ in self.dead_letters))

    def window_to_score_ms(self) -> np.ndarray:
        """Broker append time of each score minus the processing time its window fired."""
        return np.array([ts - v["fired_at_ms"] for _, v, ts in self.scores], dtype=np.float64)

    def processing_span_s(self) -> float:
        """Seconds from the first to the last output record appended to Kafka."""
        stamps = [ts for recs in (self.scores, self.snapshots, self.dead_letters) for _, _, ts in recs]
        return (max(stamps) - min(stamps)) / 1000.0 if len(stamps) > 1 else 0.0


def read_outputs(bootstrap: str, scores: str = "scores", snapshots: str = "feature-snapshots",
                 dead_letters: str = "dead-letters", timeout_s: float = 120.0) -> Outputs:
    return Outputs(
        read_topic(bootstrap, scores, lambda v: decode(v, "scored_result"), timeout_s=timeout_s),
        read_topic(bootstrap, snapshots, lambda v: decode(v, "feature_snapshot"), timeout_s=timeout_s),
        read_topic(bootstrap, dead_letters, decode_dead_letter, timeout_s=timeout_s),
    )


def percentile(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if values.size else None
