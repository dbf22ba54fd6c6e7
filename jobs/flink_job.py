"""The streamscore Flink job (PyFlink Table API + SQL compiled from the feature spec).

events (Kafka, raw bytes) -> JVM Avro decode + validation (``DecodeEvent`` UDF)
  -> bad records and late events -> dead-letters
  -> event time, bounded-out-of-orderness watermark -> windowed aggregations (Flink SQL)
  -> feature-snapshots; scoring groups joined per user and window end
  -> vectorized Python map: one ONNX call per Arrow batch -> scores

Runs on the embedded mini-cluster (``streamscore run``) or on a standalone session
cluster (``flink run -py jobs/flink_job.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `flink run -py jobs/flink_job.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs.config import JobConfig  # noqa: E402
from jobs.kafka_limits import SINK_MAX_REQUEST_BYTES  # noqa: E402
from jobs.paths import flink_jar_urls  # noqa: E402
from transforms.avro_sql import columns_ddl, field_names  # noqa: E402
from transforms.codecs import SCHEMA_DIR, SCHEMA_VERSION_HEADER, latest_version, schema_versions  # noqa: E402
from transforms.dead_letters import DEAD_LETTER_SCHEMA_VERSION, MAX_DETAIL_CHARS  # noqa: E402
from transforms.fairness import ATTRIBUTES  # noqa: E402
from transforms.monitoring import MonitorConfig  # noqa: E402
from transforms.online_eval import EvalConfig, RollbackPolicy  # noqa: E402
from transforms.pit import label_step_ms  # noqa: E402
from transforms.registry import Registry, RegistryError  # noqa: E402
from transforms.router import initial_deployment  # noqa: E402
from transforms.schema_compat import incompatible_writers  # noqa: E402
from transforms.serving import ServingConfig  # noqa: E402
from transforms.spec import FeatureSpec, load_spec  # noqa: E402
from transforms.sql_compiler import (  # noqa: E402
    STDDEV_FUNCTION,
    accepted_condition,
    feature_column,
    group_input_query,
    group_query,
    interval,
    label_query,
    late_condition,
    late_detail_sql,
    scoring_input_query,
    snapshot_query,
    source_watermark_ms,
)


class JobSetupError(RuntimeError):
    """The job refuses to start (bad configuration, missing jars, model/spec mismatch)."""


def monitor_warmup_ms(spec: FeatureSpec) -> int:
    """Event time after a cold start until every scoring window is full (drift monitoring
    skips it; the training reference is steady state)."""
    return max(spec.group(g).window.size_ms for g in spec.scoring_groups)


def check_models(cfg: JobConfig, spec: FeatureSpec) -> None:
    """Refuse to serve a primary model trained on another feature-set version."""
    dep = initial_deployment(Path(cfg.registry_path), cfg.model_name, cfg.fallback_model_name)
    try:
        if not dep.arms:
            raise RegistryError("no active model in the registry")
        entry = Registry(Path(cfg.registry_path)).get(dep.arms[0].model)
    except RegistryError as exc:
        print(f"[job] warning: {exc}; scores will come from the fallback chain", file=sys.stderr)
        return
    if entry.feature_set_version != spec.version:
        raise JobSetupError(
            f"model {entry.name}:{entry.version} was trained on feature set {entry.feature_set_version}, "
            f"but the running spec is {spec.version}; retrain (`streamscore train`) or run the matching spec")


def check_event_schemas(schema_dir: Path | None = None) -> tuple[int, ...]:
    """Refuse to start when the newest event schema (the reader) cannot read every
    ``event.vN.avsc`` of the schemas folder; return the versions, ascending."""
    folder = schema_dir or SCHEMA_DIR
    try:
        bad = incompatible_writers(folder, "event")
    except FileNotFoundError as exc:
        raise JobSetupError(str(exc)) from exc
    if bad:
        newest = max(schema_versions("event", folder))
        lines = [f"  event.v{v}.avsc: {p}" for v, probs in sorted(bad.items()) for p in probs]
        raise JobSetupError(f"reader schema event.v{newest}.avsc cannot read every event schema in {folder} "
                            "(Avro resolution):\n" + "\n".join(lines))
    return schema_versions("event", folder)


def check_udf_jar_schemas(jar: Path, versions: tuple[int, ...], schema_dir: Path | None = None) -> None:
    """The decode UDF reads the schemas bundled in its jar: they must be the folder's."""
    import zipfile

    folder = schema_dir or SCHEMA_DIR
    try:
        with zipfile.ZipFile(jar) as zf:
            names = set(zf.namelist())
            stale = [f"event.v{v}.avsc" for v in versions
                     if f"schemas/event.v{v}.avsc" not in names
                     or zf.read(f"schemas/event.v{v}.avsc") != (folder / f"event.v{v}.avsc").read_bytes()]
    except (OSError, zipfile.BadZipFile) as exc:
        raise JobSetupError(f"cannot read the UDF jar {jar}: {exc}") from exc
    if stale:
        raise JobSetupError(f"{jar.name} bundles other or no copies of {', '.join(stale)}: run `make jars`")


def _delivery_options(cfg: JobConfig, name: str) -> str:
    """Sink delivery: exactly-once writes each checkpoint's records in one Kafka transaction
    (committed when the checkpoint completes); at-least-once flushes on checkpoints."""
    if cfg.delivery == "exactly-once":
        return (f"'sink.delivery-guarantee'='exactly-once', "
                f"'sink.transactional-id-prefix'='{cfg.transactional_id_prefix(name)}', "
                f"'properties.transaction.timeout.ms'='{cfg.transaction_timeout_ms}', ")
    return "'sink.delivery-guarantee'='at-least-once', "


def _kafka_sink(name: str, topic: str, schema: str, key_col: str, cfg: JobConfig, version: int | None = None) -> str:
    """Sink table writing ``schemas/<schema>.v<version>.avsc`` (default: the newest version)."""
    cols = columns_ddl(schema, version or latest_version(schema))
    # max.request.size = the broker's message.max.bytes (jobs/kafka_limits.py); every record
    # written here is bounded far below it (dead letters by dead_letter_max_raw_bytes)
    common = (f"'connector'='kafka', 'topic'='{topic}', 'properties.bootstrap.servers'='{cfg.bootstrap_servers}', "
              f"{cfg.kafka_security.flink_options_sql()}{_delivery_options(cfg, name)}'properties.linger.ms'='{cfg.sink_linger_ms}', "
              f"'properties.max.request.size'='{SINK_MAX_REQUEST_BYTES}'")
    if key_col:
        return (f"CREATE TEMPORARY TABLE {name} (`kafka_key` STRING NOT NULL, {cols}) WITH ("
                f"{common}, 'key.format'='raw', 'key.fields'='kafka_key', 'value.format'='avro', "
                "'value.fields-include'='EXCEPT_KEY', 'properties.compression.type'='lz4')")
    return f"CREATE TEMPORARY TABLE {name} ({cols}) WITH ({common}, 'format'='avro')"


def checkpoint_settings(cfg: JobConfig) -> dict[str, str]:
    """Checkpointing, state backend, retention, restart strategy and restore path: set on
    the environment's configuration when it is created."""
    out = {
        "state.backend.type": cfg.state_backend,
        "execution.checkpointing.dir": cfg.checkpoint_uri(),
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        "restart-strategy.type": "fixed-delay",
        "restart-strategy.fixed-delay.attempts": str(cfg.restart_attempts),
        "restart-strategy.fixed-delay.delay": f"{cfg.restart_delay_ms} ms",
        # operator uids from the plan's node ids, so state maps back after an upgrade or rescale
        "table.exec.uid.generation": "ALWAYS",
    }
    if cfg.state_backend == "rocksdb":
        out["execution.checkpointing.incremental"] = "true"
    if cfg.checkpoint_interval_ms:
        out["execution.checkpointing.interval"] = f"{cfg.checkpoint_interval_ms} ms"
    if cfg.restore_from:
        out["execution.state-recovery.path"] = cfg.restore_from
    return out


def decode_call(cfg: JobConfig, versions: tuple[int, ...] | None = None, reader_version: int | None = None) -> str:
    """The JVM decode UDF call; the ``schema-version`` header picks the writer among
    ``versions`` (default: every event schema), read with ``reader_version`` (default: the
    newest). Schema files and limits travel as literals."""
    lim = cfg.limits
    versions = versions or schema_versions("event")
    writers = ",".join(f"{v}=event.v{v}.avsc" for v in versions)
    return (f"decode_event(`value`, `headers`['{SCHEMA_VERSION_HEADER}'], '{writers}', "
            f"'event.v{reader_version or max(versions)}.avsc', "
            f"{lim.max_key_bytes}, CAST({lim.min_ts_ms} AS BIGINT), CAST({lim.max_ts_ms} AS BIGINT), "
            f"CAST({float(lim.min_dwell_ms)!r} AS DOUBLE), CAST({float(lim.max_dwell_ms)!r} AS DOUBLE))")


def source_ddl(cfg: JobConfig, spec: FeatureSpec) -> str:
    bounded = "'scan.bounded.mode'='latest-offset', " if cfg.bounded else ""
    return (
        "CREATE TEMPORARY TABLE events_raw ("
        " `value` BYTES,"
        " `src_partition` INT METADATA FROM 'partition' VIRTUAL,"
        " `src_offset` BIGINT METADATA FROM 'offset' VIRTUAL,"
        " `headers` MAP<STRING, BYTES> METADATA FROM 'headers' VIRTUAL,"
        f" `ev` AS {decode_call(cfg)},"
        f" `ts` AS TO_TIMESTAMP_LTZ(COALESCE({decode_call(cfg)}.`ts_ms`, 0), 3),"
        f" WATERMARK FOR `ts` AS `ts` - {interval(source_watermark_ms(spec))}"
        ") WITH ("
        f"'connector'='kafka', 'topic'='{cfg.events_topic}', {cfg.kafka_security.flink_options_sql()}"
        f"'properties.bootstrap.servers'='{cfg.bootstrap_servers}', 'properties.group.id'='{cfg.group_id}', "
        f"'scan.startup.mode'='earliest-offset', {bounded}'format'='raw', 'properties.isolation.level'='read_committed', "
        f"'scan.watermark.emit.strategy'='{cfg.watermark_emit}', "
        f"'scan.watermark.idle-timeout'='{cfg.source_idle_ms} ms', "
        "'properties.fetch.max.bytes'='52428800', 'properties.max.partition.fetch.bytes'='10485760')"
    )


@dataclass
class BuiltJob:
    t_env: Any
    statements: Any
    spec: FeatureSpec


def _ceiling_statements(t_env: Any, spec: FeatureSpec) -> Any:
    """The engine's ceiling (benchmark): the same decode and windowed aggregations, no
    scoring and no Python, every feature column into a blackhole sink (so the planner
    cannot prune an aggregate)."""
    stmts = t_env.create_statement_set()
    for g in spec.groups:
        feats = [feature_column(n) for n in g.feature_names]
        t_env.execute_sql(f"CREATE TEMPORARY TABLE sink_{g.name} (entity_id STRING, window_end_ms BIGINT, "
                          + ", ".join(f"`{c}` DOUBLE" for c in feats) + ") WITH ('connector'='blackhole')")
        stmts.add_insert_sql(f"INSERT INTO sink_{g.name} SELECT entity_id, window_end_ms, "
                             + ", ".join(f"`{c}`" for c in feats) + f" FROM grp_{g.name}")
    return stmts


def dead_letters_insert(cfg: JobConfig, spec: FeatureSpec) -> str:
    """Decode failures and late events into ``dead_letters_sink`` (dead_letter.v2): each
    keeps at most ``cfg.dead_letter_max_raw_bytes`` of its value, with the whole value's
    size and SHA-256 (``raw_digest``, the JVM twin of ``transforms.dead_letters.bound_raw``)
    and a detail of at most ``MAX_DETAIL_CHARS``, so no input record makes one too large."""
    topic, n = cfg.events_topic, cfg.dead_letter_max_raw_bytes
    bad = (f"SELECT count_reason(reason) AS reason, COALESCE(detail, '') AS detail, src_partition, src_offset,"
           f" raw_digest(`raw_value`, {n}) AS dg FROM decoded WHERE reason IS NOT NULL")
    late = (f"SELECT count_reason('late') AS reason, {late_detail_sql(spec)} AS detail, src_partition, src_offset,"
            f" raw_digest(`raw_value`, {n}) AS dg FROM decoded WHERE reason IS NULL AND {late_condition(spec)}")
    return ("INSERT INTO dead_letters_sink SELECT d.reason, SUBSTRING(d.detail FROM 1 FOR"
            f" {MAX_DETAIL_CHARS}), '{topic}', d.src_partition, d.src_offset, d.dg.`raw`,"
            f" {DEAD_LETTER_SCHEMA_VERSION}, d.dg.`raw_size`, d.dg.`raw_sha256`, d.dg.`raw_truncated`"
            f" FROM ({bad} UNION ALL {late}) AS d")


def build(cfg: JobConfig, ceiling: bool = False) -> BuiltJob:
    """Create the table environment and the statement set of the job (not yet executed);
    with ``ceiling``, the bare-SQL variant of the benchmark instead."""
    from pyflink.table import EnvironmentSettings, TableEnvironment

    from jobs.flink_udfs import ScoreBatch, score_udf

    spec = load_spec(cfg.spec_file())
    versions = check_event_schemas()
    if not ceiling:
        check_models(cfg, spec)
    try:
        jars = flink_jar_urls()
    except FileNotFoundError as exc:
        raise JobSetupError(str(exc)) from exc
    from urllib.parse import unquote, urlparse

    udf_jar = next(u for u in jars if "streamscore-udfs" in u)
    check_udf_jar_schemas(Path(unquote(urlparse(udf_jar).path)), versions)
    from jobs.metrics import port_from_env, prepare_environment, reporter_settings

    prom_port = port_from_env()  # STREAMSCORE_PROMETHEUS_PORT
    prepare_environment(prom_port)  # the reporter jar on the gateway JVM's classpath, before it starts
    from pyflink.common import Configuration

    env_conf = Configuration()  # execution settings must be known when the environment is made
    env_conf.set_string("pipeline.object-reuse", "true")
    env_conf.set_string("parallelism.default", str(cfg.parallelism))
    for k, v in checkpoint_settings(cfg).items():  # the ceiling too: same engine settings
        env_conf.set_string(k, v)
    for k, v in cfg.flink_settings().items():  # STREAMSCORE_FLINK_CONF: last word
        env_conf.set_string(k, v)
    if prom_port:  # reporters are created with the mini-cluster: they go in its configuration
        for k, v in reporter_settings(prom_port).items():
            env_conf.set_string(k, v)
    t_env = TableEnvironment.create(
        EnvironmentSettings.new_instance().in_streaming_mode().with_configuration(env_conf).build())
    conf = t_env.get_config()
    settings = {
        "pipeline.jars": ";".join(jars),
        "pipeline.name": "streamscore-ceiling" if ceiling else "streamscore",
        "pipeline.object-reuse": "true",
        "table.local-time-zone": "UTC",
        "parallelism.default": str(cfg.parallelism),
        "execution.buffer-timeout.interval": f"{cfg.buffer_timeout_ms} ms",
        "python.executable": sys.executable,
        "python.client.executable": sys.executable,
        "python.fn-execution.bundle.size": str(cfg.bundle_size),
        "python.fn-execution.bundle.time": str(cfg.bundle_time_ms),
        "python.fn-execution.arrow.batch.size": str(cfg.arrow_batch_size),
        "table.exec.source.idle-timeout": f"{cfg.source_idle_ms} ms",
        "pipeline.auto-watermark-interval": f"{cfg.watermark_interval_ms} ms",
    }
    settings.update(checkpoint_settings(cfg))
    settings.update(cfg.flink_settings())
    for k, v in settings.items():
        conf.set(k, v)

    t_env.create_java_temporary_system_function("decode_event", "io.streamscore.udf.DecodeEvent")
    t_env.create_java_temporary_system_function(STDDEV_FUNCTION, "io.streamscore.udf.StddevPop")
    t_env.create_java_temporary_system_function("count_reason", "io.streamscore.udf.CountReason")
    t_env.create_java_temporary_system_function("raw_digest", "io.streamscore.udf.RawDigest")
    t_env.execute_sql(source_ddl(cfg, spec))
    ev_cols = ", ".join(f"`ev`.`{c}` AS `{c}`" for c in field_names("event", max(versions)))
    t_env.execute_sql(
        f"CREATE TEMPORARY VIEW decoded AS SELECT {ev_cols}, `ev`.`reason` AS reason, `ev`.`detail` AS detail,"
        " `value` AS `raw_value`, src_partition, src_offset, ts FROM events_raw")
    t_env.execute_sql(
        f"CREATE TEMPORARY VIEW accepted_events AS SELECT * FROM decoded WHERE reason IS NULL AND {accepted_condition()}")
    for g in spec.groups:
        attrs = ATTRIBUTES if not ceiling and g.name == spec.scoring_groups[0] else ()
        t_env.execute_sql(f"CREATE TEMPORARY VIEW in_{g.name} AS {group_input_query(g, spec, 'accepted_events')}")
        t_env.execute_sql(f"CREATE TEMPORARY VIEW grp_{g.name} AS {group_query(g, f'in_{g.name}', attrs)}")
    if ceiling:
        return BuiltJob(t_env, _ceiling_statements(t_env, spec), spec)

    t_env.execute_sql(_kafka_sink("dead_letters_sink", cfg.dead_letters_topic, "dead_letter", "", cfg))
    t_env.execute_sql(_kafka_sink("snapshots_sink", cfg.snapshots_topic, "feature_snapshot", "key", cfg))
    t_env.execute_sql(_kafka_sink("scores_sink", cfg.scores_topic, "scored_result", "key", cfg))

    stmts = t_env.create_statement_set()
    stmts.add_insert_sql(dead_letters_insert(cfg, spec))
    snaps = " UNION ALL ".join(
        f"SELECT CONCAT('{g.name}|', entity_id), * FROM ({snapshot_query(g, f'grp_{g.name}', spec.version)})"
        for g in spec.groups)
    stmts.add_insert_sql(f"INSERT INTO snapshots_sink {snaps}")

    step_ms = label_step_ms(spec)
    eval_cfg = EvalConfig(step_ms, cfg.attribution_ms or step_ms, cfg.eval_window_ms, cfg.eval_grace_ms,
                          cfg.serving_threshold) if cfg.online_eval else None
    labels_view = None
    if eval_cfg is not None:
        t_env.execute_sql(f"CREATE TEMPORARY VIEW click_events AS SELECT user_id, ts FROM in_{spec.scoring_groups[0]}"
                          " WHERE event_type = 'click'")
        t_env.execute_sql("CREATE TEMPORARY VIEW click_windows AS "
                          + label_query(eval_cfg.step_ms, eval_cfg.attribution_ms, "click_events"))
        labels_view = "click_windows"
    scoring_input = t_env.sql_query(
        scoring_input_query(spec, {g: f"grp_{g}" for g in spec.scoring_groups}, labels_view, ATTRIBUTES))
    serving = ServingConfig(cfg.registry_path, cfg.model_name, cfg.fallback_model_name, spec.version,
                            cfg.default_score, cfg.latency_budget_ms, eval_cfg,
                            RollbackPolicy(cfg.rollback_min_labels, cfg.rollback_logloss_ratio),
                            MonitorConfig(cfg.monitor_window_ms, cfg.drift_thresholds(), cfg.explain_rate,
                                          cfg.drift_fallback, warmup_ms=monitor_warmup_ms(spec)) if cfg.monitor else None,
                            tuple(spec.model_feature_names))
    scorer = ScoreBatch(serving, len(spec.model_feature_names), cfg.bootstrap_servers, cfg.alerts_topic,
                        cfg.metrics_topic if eval_cfg is not None else "", cfg.control_topic,
                        cfg.monitoring_topic, cfg.explanations_topic)
    scored = scoring_input.map(score_udf(scorer))
    t_env.create_temporary_view("scored", scored)
    cols = "user_id, user_id, window_start_ms, window_end_ms, {score}, {name}, {version}, {arm}, {reason}," \
           f" '{spec.version}', fired_at_ms, scored_at_ms, 1 FROM scored WHERE row_kind = 's'"
    served = cols.format(score="score", name="model_name", version="model_version", arm="arm", reason="fallback_reason")
    shadow = cols.format(score="shadow_score", name="shadow_model_name", version="shadow_model_version",
                         arm="'shadow'", reason="''") + " AND shadow_model_version <> ''"
    stmts.add_insert_sql(f"INSERT INTO scores_sink SELECT {served} UNION ALL SELECT {shadow}")
    return BuiltJob(t_env, stmts, spec)


def check_kafka(cfg: JobConfig, timeout_s: float = 10.0) -> None:
    """Preflight: rejected credentials stop the job before it starts (with them it would
    only fail and restart in a loop); a broker that does not answer yet is left to the
    restart strategy. A password variable becomes a private file for the child processes."""
    from jobs.kafka_security import KafkaAuthError, KafkaUnreachableError, check_connection, move_password_to_file

    move_password_to_file()  # the JVM and the Python workers get a file name, not the password
    try:
        check_connection(cfg.bootstrap_servers, cfg.kafka_security, timeout_s)
    except KafkaAuthError as exc:
        raise JobSetupError(str(exc)) from exc
    except KafkaUnreachableError as exc:
        print(f"[job] warning: {exc}", file=sys.stderr, flush=True)


def _drain_when_stuck(cfg: JobConfig, client: Any, poll_s: float = 1.0,
                      ended: threading.Event | None = None) -> None:
    """A bounded Kafka source whose enumerator was recreated from state (a restore from a
    checkpoint or savepoint, or a global failover) reads to its stopping offsets and then
    never finishes (FLINK-31006, open in connector 5.0.0). When the job's committed offsets
    have reached the end offsets and it is still running a grace period later, stop it with
    a draining savepoint: the sources emit the final watermark, every window fires, and
    the last transactions commit, as at the end of a bounded run."""
    from jobs.kafka_io import caught_up, end_offsets

    grace_s = 10.0 + 3 * cfg.checkpoint_interval_ms / 1000.0
    ends: dict[int, int] | None = None
    consumed_at = None
    ended = ended or threading.Event()
    while consumed_at is None or time.monotonic() - consumed_at < grace_s:
        if ended.wait(poll_s):  # the job finished on its own: nothing to drain
            return
        if consumed_at is not None:
            continue
        try:
            if ends is None:
                ends = {p: hi for p, hi in end_offsets(cfg.bootstrap_servers, cfg.events_topic).items() if hi > 0}
            done = caught_up(cfg.bootstrap_servers, cfg.group_id, cfg.events_topic, ends)
        except Exception as exc:  # broker briefly away: try again
            print(f"[job] committed offsets unavailable ({type(exc).__name__})", file=sys.stderr)
            continue
        if done:
            consumed_at = time.monotonic()
    print("[job] input consumed but the bounded source has not finished; stopping with a draining savepoint",
          file=sys.stderr, flush=True)
    from pyflink.java_gateway import get_gateway

    fmt = get_gateway().jvm.org.apache.flink.core.execution.SavepointFormatType.CANONICAL
    target = cfg.checkpoint_uri() + "/savepoints"
    try:
        client._j_job_client.stopWithSavepoint(True, target, fmt).get()
    except Exception as exc:  # the job ended on its own meanwhile
        print(f"[job] draining stop not taken ({type(exc).__name__}: {str(exc)[:200]})", file=sys.stderr)


def run(cfg: JobConfig, wait: bool = True, ceiling: bool = False) -> dict[str, Any]:
    """Build and execute the job; with ``wait`` block until a bounded run finishes.
    ``running_s`` is the time from RUNNING to finished (the benchmark's job time).
    With ``wait``, the engine processes this started (the gateway JVM with the
    mini-cluster, the Python workers) have ended too when it returns or raises."""
    from jobs.local_engine import LocalEngine

    engine = LocalEngine().start() if wait and LocalEngine.current() is None else None
    ended = threading.Event()

    def drain(client: Any) -> None:  # outlives run() in a process that goes on (demo): quiet once it ended
        try:
            _drain_when_stuck(cfg, client, ended=ended)
        except Exception:
            if not ended.is_set():
                raise

    try:
        t0 = time.monotonic()
        check_kafka(cfg)
        job = build(cfg, ceiling)
        result = job.statements.execute()
        client = result.get_job_client()
        job_id = str(client.get_job_id()) if client is not None else ""
        print(f"[job] submitted {job_id} (feature set {job.spec.version})", file=sys.stderr, flush=True)
        info: dict[str, Any] = {"job_id": job_id, "feature_set_version": job.spec.version}
        if wait and cfg.bounded and not ceiling and client is not None:
            threading.Thread(target=drain, args=(client,), daemon=True).start()
        if wait:
            result.wait()
            t_end = time.monotonic()
            info.update(seconds=t_end - t0)
            try:  # the JobManager's net runtime: from the job's start to its end, no planning
                net_ms = client.get_job_execution_result().result().get_net_runtime()
                info["running_s"] = net_ms / 1000.0
            except Exception as exc:  # py4j errors when the mini-cluster is gone
                print(f"[job] net runtime unavailable ({type(exc).__name__}); using wall time", file=sys.stderr)
                info["running_s"] = t_end - t0
        return info
    finally:
        ended.set()
        if engine is not None:
            engine.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamscore run", description="Run the streamscore Flink job. "
                                 "Configuration comes from STREAMSCORE_* variables (see jobs/config.py).")
    ap.add_argument("--unbounded", action="store_true", help="keep running after the current end of events")
    ap.add_argument("--no-wait", action="store_true", help="return after submitting")
    ap.add_argument("--explain", action="store_true", help="print the optimized plan and exit")
    ap.add_argument("--ceiling", action="store_true",
                    help="benchmark ceiling: same decode + aggregations into a blackhole, no scoring")
    args = ap.parse_args(argv)
    from jobs.local_engine import LocalEngine
    from jobs.proctree import exit_on_signals

    exit_on_signals()  # SIGTERM/SIGHUP unwind through the engine's ending, like Ctrl-C
    cfg = JobConfig.from_env(**({"bounded": False} if args.unbounded else {}))
    with LocalEngine():  # whatever happens, the gateway JVM and the Python workers end with the driver
        if args.explain:
            print(build(cfg, args.ceiling).statements.explain())
            return 0
        try:
            info = run(cfg, wait=not args.no_wait, ceiling=args.ceiling)
        except JobSetupError as exc:
            print(f"[job] cannot start: {exc}", file=sys.stderr, flush=True)
            return 2
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
