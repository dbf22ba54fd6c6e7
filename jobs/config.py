"""The one frozen, validated configuration object of the Flink job.

Every field can be set by the environment variable named in its comment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from jobs.kafka_security import KafkaSecurity
from jobs.paths import CACHE, REGISTRY
from transforms.codecs import ValidationLimits
from transforms.dead_letters import DEFAULT_MAX_RAW_BYTES, check_max_raw_bytes
from transforms.drift import DriftThresholds


def _env_bool(v: str) -> bool:
    return v.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class JobConfig:
    # STREAMSCORE_BOOTSTRAP: Kafka bootstrap servers
    bootstrap_servers: str = "127.0.0.1:9092"
    # STREAMSCORE_EVENTS_TOPIC / _SCORES_TOPIC / _SNAPSHOTS_TOPIC / _DEAD_LETTERS_TOPIC
    events_topic: str = "events"
    scores_topic: str = "scores"
    snapshots_topic: str = "feature-snapshots"
    dead_letters_topic: str = "dead-letters"
    # STREAMSCORE_GROUP_ID: consumer group of the job's Kafka source
    group_id: str = "streamscore-job"
    # STREAMSCORE_BOUNDED: stop at the end offsets seen at start (demo, tests, bench)
    bounded: bool = True
    # STREAMSCORE_PARALLELISM: default operator parallelism
    parallelism: int = 1
    # STREAMSCORE_SPEC: feature spec YAML (empty: the packaged default)
    spec_path: str = ""
    # STREAMSCORE_REGISTRY: model registry manifest
    registry_path: str = str(REGISTRY)
    # STREAMSCORE_MODEL / STREAMSCORE_FALLBACK_MODEL: the served and known-good models at
    # start (name or name:version; empty: the registry's `active` and `fallback` stages);
    # model-control commands change them while the job runs
    model_name: str = ""
    fallback_model_name: str = ""
    # STREAMSCORE_ALERTS_TOPIC / _METRICS_TOPIC / _CONTROL_TOPIC: alerts, online-evaluation
    # metrics and the compacted model-control topic (empty: that channel is off)
    alerts_topic: str = "alerts"
    metrics_topic: str = "model-metrics"
    control_topic: str = "model-control"
    # STREAMSCORE_ONLINE_EVAL: join scores with later clicks and emit per-window metrics
    online_eval: bool = True
    # STREAMSCORE_ATTRIBUTION_MS: a score at window end W is labelled by clicks in
    # [W, W + attribution_ms) (0: one scoring step, the training label)
    attribution_ms: int = 0
    # STREAMSCORE_EVAL_WINDOW_MS / STREAMSCORE_EVAL_GRACE_MS: metrics per this span of window
    # ends; event time the click stream must pass a label window by before "no click"
    eval_window_ms: int = 60_000
    eval_grace_ms: int = 20_000
    # STREAMSCORE_ROLLBACK_MIN_LABELS / STREAMSCORE_ROLLBACK_LOGLOSS_RATIO: automatic rollback
    # when an arm's online log loss exceeds the fallback's on the same scores by this ratio
    # in an eval window with at least this many labels (ratio 0: never)
    rollback_min_labels: int = 300
    rollback_logloss_ratio: float = 1.25
    # STREAMSCORE_MONITORING_TOPIC / STREAMSCORE_EXPLANATIONS_TOPIC: drift, fairness and
    # retrain records; sampled explanations (empty: off)
    monitoring_topic: str = "model-monitoring"
    explanations_topic: str = "explanations"
    # STREAMSCORE_MONITOR: drift, fairness and explanations in the scoring stage
    monitor: bool = True
    # STREAMSCORE_MONITOR_WINDOW_MS: drift monitoring window (of window ends)
    monitor_window_ms: int = 60_000
    # STREAMSCORE_PSI_WARN / _PSI_SEVERE / _KS_WARN / _KS_SEVERE / _DRIFT_MIN_COUNT /
    # _RETRAIN_AFTER_WINDOWS: drift alert thresholds (severe drift falls back)
    psi_warn: float = 0.1
    psi_severe: float = 0.25
    ks_warn: float = 0.1
    ks_severe: float = 0.25
    drift_min_count: int = 200
    retrain_after_windows: int = 3
    # STREAMSCORE_DRIFT_FALLBACK: severe drift rolls traffic back to the fallback model
    drift_fallback: bool = True
    # STREAMSCORE_EXPLAIN_RATE: share of scores explained (0 disables)
    explain_rate: float = 0.01
    # STREAMSCORE_SERVING_THRESHOLD: a score at or above it is a positive decision (fairness)
    serving_threshold: float = 0.3
    # STREAMSCORE_DEFAULT_SCORE: score when no model can serve
    default_score: float = 0.05
    # STREAMSCORE_LATENCY_BUDGET_MS: a scoring batch slower than this falls back
    latency_budget_ms: float = 250.0
    # STREAMSCORE_BUNDLE_SIZE / STREAMSCORE_BUNDLE_TIME_MS / STREAMSCORE_ARROW_BATCH:
    # Python UDF bundling (rows per bundle, max wait) and Arrow batch rows
    bundle_size: int = 10_000
    bundle_time_ms: int = 20
    arrow_batch_size: int = 2_000
    # STREAMSCORE_BUFFER_TIMEOUT_MS: network buffer flush interval
    buffer_timeout_ms: int = 10
    # STREAMSCORE_CHECKPOINT_MS: checkpoint interval; 0 disables checkpointing (only with
    # at-least-once delivery). Exactly-once output becomes visible at each checkpoint.
    checkpoint_interval_ms: int = 5_000
    # STREAMSCORE_DELIVERY: exactly-once (transactional Kafka sinks committed on checkpoints;
    # readers use isolation.level=read_committed) or at-least-once
    delivery: str = "exactly-once"
    # STREAMSCORE_TXN_TIMEOUT_MS: producer transaction timeout of exactly-once sinks (at most
    # the broker's transaction.max.timeout.ms, 15 min by default)
    transaction_timeout_ms: int = 600_000
    # STREAMSCORE_STATE_BACKEND: hashmap (keyed state on the JVM heap, full checkpoints: 2.9x
    # the events per CPU-second of rocksdb here, bench pair 20e9008d) or rocksdb (state larger
    # than the heap, incremental checkpoints; see the README's performance section)
    state_backend: str = "hashmap"
    # STREAMSCORE_FLINK_CONF: extra Flink settings "key=value;key=value", applied last over
    # every setting the job derives (for experiments and benchmark pairs: one flag a lever)
    flink_conf: str = ""
    # STREAMSCORE_CHECKPOINT_DIR: where checkpoints are kept, retained on cancel and failure
    # (empty: .cache/checkpoints)
    checkpoint_dir: str = ""
    # STREAMSCORE_RESTORE_FROM: a checkpoint or savepoint folder to start from (empty: fresh)
    restore_from: str = ""
    # STREAMSCORE_RESTART_ATTEMPTS / STREAMSCORE_RESTART_DELAY_MS: in-job restarts from the
    # last checkpoint after a failure (broker outage, lost TaskManager) before the job fails
    restart_attempts: int = 20
    restart_delay_ms: int = 2_000
    # STREAMSCORE_SINK_LINGER_MS: Kafka producer linger of the sinks
    sink_linger_ms: int = 5
    # STREAMSCORE_WATERMARK_EMIT: on-event (a watermark after every record: deterministic
    # lateness, the semantics of the reference) or on-periodic (every
    # pipeline.auto-watermark-interval: cheaper, lateness depends on timing)
    watermark_emit: str = "on-event"
    # STREAMSCORE_WATERMARK_INTERVAL_MS: interval of on-periodic watermarks
    watermark_interval_ms: int = 200
    # STREAMSCORE_SOURCE_IDLE_MS: partitions idle this long stop holding the watermark back
    source_idle_ms: int = 5_000
    # STREAMSCORE_DEAD_LETTER_MAX_RAW_BYTES: a dead letter keeps at most this many leading
    # bytes of its source value, plus the value's size and SHA-256 (0 to 1048576)
    dead_letter_max_raw_bytes: int = DEFAULT_MAX_RAW_BYTES
    # STREAMSCORE_MAX_KEY_BYTES / STREAMSCORE_MIN_TS_MS / STREAMSCORE_MAX_TS_MS /
    # STREAMSCORE_MIN_DWELL_MS / STREAMSCORE_MAX_DWELL_MS: validation (inclusive bounds; an
    # event outside them is dead-lettered as invalid_key / invalid_timestamp / invalid_dwell)
    limits: ValidationLimits = field(default_factory=ValidationLimits)
    # STREAMSCORE_KAFKA_SECURITY_PROTOCOL / _SASL_MECHANISM / _USERNAME[_FILE] /
    # _PASSWORD[_FILE] / _SSL_CA_FILE: Kafka authentication (jobs/kafka_security.py)
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)

    def __post_init__(self) -> None:
        if not self.bootstrap_servers:
            raise ValueError("bootstrap_servers is empty")
        if self.parallelism < 1:
            raise ValueError("parallelism must be >= 1")
        if self.bundle_size < 1 or self.arrow_batch_size < 1 or self.arrow_batch_size > self.bundle_size:
            raise ValueError("need 1 <= arrow_batch_size <= bundle_size")
        if self.bundle_time_ms < 1 or self.buffer_timeout_ms < 0 or self.checkpoint_interval_ms < 0:
            raise ValueError("bundle_time_ms must be >= 1; buffer and checkpoint intervals >= 0")
        if self.delivery not in ("exactly-once", "at-least-once"):
            raise ValueError("delivery must be exactly-once or at-least-once")
        if self.delivery == "exactly-once" and self.checkpoint_interval_ms == 0:
            raise ValueError("exactly-once delivery commits on checkpoints: checkpoint_interval_ms must be > 0")
        if self.state_backend not in ("rocksdb", "hashmap"):
            raise ValueError("state_backend must be rocksdb or hashmap")
        if self.transaction_timeout_ms < 1_000 or self.restart_attempts < 0 or self.restart_delay_ms < 0:
            raise ValueError("transaction_timeout_ms must be >= 1000, restart settings >= 0")
        if self.watermark_emit not in ("on-event", "on-periodic"):
            raise ValueError("watermark_emit must be on-event or on-periodic")
        if self.watermark_interval_ms < 1:
            raise ValueError("watermark_interval_ms must be >= 1")
        if not 0.0 <= self.default_score <= 1.0:
            raise ValueError("default_score must be in [0, 1]")
        if self.latency_budget_ms <= 0:
            raise ValueError("latency_budget_ms must be > 0")
        for t in (self.events_topic, self.scores_topic, self.snapshots_topic, self.dead_letters_topic):
            if not t or "'" in t:
                raise ValueError(f"bad topic name {t!r}")
        if self.attribution_ms < 0 or self.eval_window_ms <= 0 or self.eval_grace_ms < 0:
            raise ValueError("attribution_ms and eval_grace_ms must be >= 0, eval_window_ms > 0")
        if self.monitor_window_ms <= 0 or not 0.0 <= self.explain_rate <= 1.0:
            raise ValueError("monitor_window_ms must be > 0 and explain_rate in [0, 1]")
        if self.rollback_min_labels < 1 or self.rollback_logloss_ratio < 0:
            raise ValueError("rollback_min_labels must be >= 1 and rollback_logloss_ratio >= 0")
        check_max_raw_bytes(self.dead_letter_max_raw_bytes)
        self.flink_settings()  # raises on a malformed STREAMSCORE_FLINK_CONF

    def flink_settings(self) -> dict[str, str]:
        """``flink_conf`` as a mapping.

        >>> JobConfig(flink_conf="state.backend.type=hashmap; table.exec.mini-batch.enabled=true").flink_settings()
        {'state.backend.type': 'hashmap', 'table.exec.mini-batch.enabled': 'true'}
        """
        out: dict[str, str] = {}
        for part in self.flink_conf.split(";"):
            if not part.strip():
                continue
            key, eq, value = part.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"STREAMSCORE_FLINK_CONF entry {part!r} is not key=value")
            out[key.strip()] = value.strip()
        return out

    @classmethod
    def from_env(cls, **overrides: object) -> JobConfig:
        """Defaults, then STREAMSCORE_* variables, then ``overrides``."""
        e = os.environ
        names = {
            "bootstrap_servers": "BOOTSTRAP", "events_topic": "EVENTS_TOPIC", "scores_topic": "SCORES_TOPIC",
            "snapshots_topic": "SNAPSHOTS_TOPIC", "dead_letters_topic": "DEAD_LETTERS_TOPIC",
            "group_id": "GROUP_ID", "bounded": "BOUNDED", "parallelism": "PARALLELISM", "spec_path": "SPEC",
            "registry_path": "REGISTRY", "model_name": "MODEL", "fallback_model_name": "FALLBACK_MODEL",
            "default_score": "DEFAULT_SCORE", "latency_budget_ms": "LATENCY_BUDGET_MS",
            "bundle_size": "BUNDLE_SIZE", "bundle_time_ms": "BUNDLE_TIME_MS", "arrow_batch_size": "ARROW_BATCH",
            "buffer_timeout_ms": "BUFFER_TIMEOUT_MS", "checkpoint_interval_ms": "CHECKPOINT_MS",
            "sink_linger_ms": "SINK_LINGER_MS", "source_idle_ms": "SOURCE_IDLE_MS",
            "watermark_emit": "WATERMARK_EMIT", "watermark_interval_ms": "WATERMARK_INTERVAL_MS",
            "alerts_topic": "ALERTS_TOPIC", "metrics_topic": "METRICS_TOPIC", "control_topic": "CONTROL_TOPIC",
            "online_eval": "ONLINE_EVAL", "attribution_ms": "ATTRIBUTION_MS", "eval_window_ms": "EVAL_WINDOW_MS",
            "eval_grace_ms": "EVAL_GRACE_MS", "rollback_min_labels": "ROLLBACK_MIN_LABELS",
            "rollback_logloss_ratio": "ROLLBACK_LOGLOSS_RATIO", "monitoring_topic": "MONITORING_TOPIC",
            "explanations_topic": "EXPLANATIONS_TOPIC", "monitor": "MONITOR", "monitor_window_ms": "MONITOR_WINDOW_MS",
            "psi_warn": "PSI_WARN", "psi_severe": "PSI_SEVERE", "ks_warn": "KS_WARN", "ks_severe": "KS_SEVERE",
            "drift_min_count": "DRIFT_MIN_COUNT", "retrain_after_windows": "RETRAIN_AFTER_WINDOWS",
            "drift_fallback": "DRIFT_FALLBACK", "explain_rate": "EXPLAIN_RATE",
            "serving_threshold": "SERVING_THRESHOLD", "delivery": "DELIVERY",
            "transaction_timeout_ms": "TXN_TIMEOUT_MS", "state_backend": "STATE_BACKEND",
            "checkpoint_dir": "CHECKPOINT_DIR", "restore_from": "RESTORE_FROM", "flink_conf": "FLINK_CONF",
            "restart_attempts": "RESTART_ATTEMPTS", "restart_delay_ms": "RESTART_DELAY_MS",
            "dead_letter_max_raw_bytes": "DEAD_LETTER_MAX_RAW_BYTES",
        }
        types = {f.name: f.type for f in fields(cls)}
        kw: dict[str, object] = {}
        for name, suffix in names.items():
            raw = e.get(f"STREAMSCORE_{suffix}")
            if raw is None:
                continue
            t = types[name]
            kw[name] = _env_bool(raw) if t == "bool" else int(raw) if t == "int" else float(raw) if t == "float" else raw
        lim = ValidationLimits(
            max_key_bytes=int(e.get("STREAMSCORE_MAX_KEY_BYTES", ValidationLimits.max_key_bytes)),
            min_ts_ms=int(e.get("STREAMSCORE_MIN_TS_MS", ValidationLimits.min_ts_ms)),
            max_ts_ms=int(e.get("STREAMSCORE_MAX_TS_MS", ValidationLimits.max_ts_ms)),
            min_dwell_ms=float(e.get("STREAMSCORE_MIN_DWELL_MS", ValidationLimits.min_dwell_ms)),
            max_dwell_ms=float(e.get("STREAMSCORE_MAX_DWELL_MS", ValidationLimits.max_dwell_ms)),
        )
        kw["limits"] = lim
        kw["kafka_security"] = KafkaSecurity.from_env(e)
        kw.update(overrides)
        return cls(**kw)  # type: ignore[arg-type]

    def drift_thresholds(self) -> DriftThresholds:
        return DriftThresholds(psi_warn=self.psi_warn, psi_severe=self.psi_severe, ks_warn=self.ks_warn,
                               ks_severe=self.ks_severe, min_count=self.drift_min_count,
                               retrain_after_windows=self.retrain_after_windows)

    def checkpoint_uri(self) -> str:
        """The checkpoint folder as a file URI."""
        d = Path(self.checkpoint_dir) if self.checkpoint_dir else CACHE / "checkpoints"
        return d.resolve().as_uri()

    def transactional_id_prefix(self, sink: str) -> str:
        """Stable across restarts of one job (its consumer group), distinct per sink and job,
        so a restarted job aborts its own lingering transactions and fences no other job."""
        return f"streamscore-{self.group_id}-{sink}"

    def spec_file(self) -> Path | None:
        return Path(self.spec_path) if self.spec_path else None
