"""``streamscore backfill``: a point-in-time training dataset computed by Beam (DirectRunner).

Events come from an Avro container file, or a bounded offset range of a Kafka topic read
with confluent_kafka (not Beam's ReadFromKafka). Invalid records are skipped (counted by
reason); late ones are dropped by the serving watermark rule in arrival order (file
order; for Kafka, records merged across partitions by broker timestamp, each partition in
offset order). Beam computes the scoring-group features and next-window click labels
(``jobs.beam_pipelines.PitRows``), and the rows are written as ``dataset.parquet`` or
``dataset.avro`` with ``manifest.json``.
"""

from __future__ import annotations

import argparse
import heapq
import json
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from jobs.kafka_io import consume_until
from jobs.paths import ROOT
from transforms.codecs import (
    ValidationLimits,
    header_schema_version,
    latest_version,
    try_decode_event,
    validate_event,
)
from transforms.pit import ID_COLUMNS, dataset_fingerprint, sort_rows, time_range
from transforms.spec import FeatureSpec, load_spec

DEFAULT_OUT = ROOT / "data" / "backfill"
PROGRESS_EVERY = 50_000


def log(msg: str) -> None:
    print(f"[backfill] {msg}", file=sys.stderr, flush=True)


def read_avro_events(path: Path) -> Iterator[dict[str, Any]]:
    """Events of an Avro container file, in file order."""
    import fastavro

    with open(path, "rb") as fh:
        for rec in fastavro.reader(fh):
            if not isinstance(rec, dict):
                raise ValueError(f"{path}: records are not events")
            yield rec


def read_kafka_range(bootstrap: str, topic: str, start: int, end: int, *, partitions: Iterable[int] | None = None,
                     timeout_s: float = 120.0, consumer_factory: Callable[[dict[str, Any]], Any] | None = None,
                     ) -> list[tuple[bytes | None, int | None]]:
    """``(value, writer schema version from the schema-version header)`` at offsets
    ``[start, end)`` of each partition (clamped to what the log holds), merged across
    partitions by record timestamp, each partition in offset order."""
    from confluent_kafka import TopicPartition

    if start < 0 or end < start:
        raise ValueError(f"need 0 <= start-offset <= end-offset, got {start}, {end}")
    factory = consumer_factory
    if factory is None:
        from confluent_kafka import Consumer

        factory = Consumer
    from jobs.kafka_security import client_conf

    c = factory(client_conf(bootstrap, {"group.id": f"streamscore-backfill-{time.time_ns()}",
                                        "enable.auto.commit": False, "auto.offset.reset": "earliest", "log_level": 3,
                                        "isolation.level": "read_committed"}))
    per_part: dict[int, list[tuple[int, int, bytes | None, int | None]]] = {}
    try:
        md = c.list_topics(topic, timeout=10)
        meta = md.topics.get(topic)
        if meta is None or meta.error is not None:
            raise RuntimeError(f"topic {topic}: {getattr(meta, 'error', 'not found')}")
        wanted = sorted(meta.partitions) if partitions is None else sorted(set(partitions))
        missing = set(wanted) - set(meta.partitions)
        if missing:
            raise ValueError(f"topic {topic} has no partitions {sorted(missing)}")
        todo: dict[int, int] = {}
        first: dict[int, int] = {}
        for p in wanted:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            s, e = max(start, lo), min(end, hi)
            if s < e:
                todo[p], first[p], per_part[p] = e, s, []
                log(f"partition {p}: offsets [{s}, {e})")
        c.assign([TopicPartition(topic, p, first[p]) for p in todo])
        end_of = dict(todo)  # consume_until empties todo as partitions finish
        n = 0
        for msg in consume_until(c, topic, todo, timeout_s):
            p, off = msg.partition(), msg.offset()
            if p is None or off is None or p not in per_part or off >= end_of[p]:
                continue
            per_part[p].append((msg.timestamp()[1], off, msg.value(), header_schema_version(msg.headers())))
            n += 1
            if n % PROGRESS_EVERY == 0:
                log(f"read {n} records")
    finally:
        c.close()
    streams = [[(ts, p, v, ver) for ts, _off, v, ver in recs] for p, recs in sorted(per_part.items())]
    return [(v, ver) for _ts, _p, v, ver in heapq.merge(*streams, key=lambda r: (r[0], r[1]))]


def decode_records(records: Iterable[tuple[bytes | None, int | None]], invalid: Counter[str]
                   ) -> Iterator[dict[str, Any]]:
    """Events of ``(value, writer version)`` records, read as the newest event schema (as
    the job reads them); invalid ones are counted by reason."""
    reader = latest_version("event")
    for raw, version in records:
        ev, reason, _ = try_decode_event(raw, version=version, reader_version=reader)
        if ev is None:
            invalid[reason or "undecodable"] += 1
        else:
            yield ev


def validate_records(events: Iterable[dict[str, Any]], invalid: Counter[str]) -> Iterator[dict[str, Any]]:
    limits = ValidationLimits()
    for ev in events:
        problem = validate_event(ev, limits)
        if problem is None:
            yield ev
        else:
            invalid[problem[0].value] += 1


def compute_rows(spec: FeatureSpec, events: Iterable[dict[str, Any]], staging: Path) -> tuple[list[dict[str, Any]], int, int]:
    """Run ``PitRows`` on the DirectRunner: ``(rows sorted, accepted, late)``."""
    import apache_beam as beam

    from jobs.beam_pipelines import PitRows, direct_options, read_json_lines, split_late, write_json_lines

    accepted, late = split_late(spec, events)
    log(f"{len(accepted)} events accepted, {len(late)} late; running Beam (DirectRunner)")
    t0 = time.monotonic()
    prefix = str(staging / "rows")
    with beam.Pipeline(options=direct_options()) as p:
        rows = p | "Events" >> beam.Create(accepted) | "Pit" >> PitRows(spec)
        write_json_lines(rows | "Json" >> beam.Map(lambda r: json.dumps(r, sort_keys=True)), prefix)
    out = sort_rows(read_json_lines(prefix))
    log(f"Beam done: {len(out)} rows in {time.monotonic() - t0:.1f}s")
    return out, len(accepted), len(late)


def avro_field_name(column: str) -> str:
    return column.replace(".", "__")


def write_dataset(rows: list[dict[str, Any]], spec: FeatureSpec, out: Path, fmt: str) -> Path:
    """Write ``rows`` (id columns, then model features) as parquet or Avro; return the path."""
    columns = list(ID_COLUMNS) + list(spec.model_feature_names)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        types = {"user_id": pa.string(), "window_end_ms": pa.int64(), "label": pa.int8()}
        schema = pa.schema([(c, types.get(c, pa.float64())) for c in columns],
                           metadata={"feature_set_version": spec.version})
        table = pa.Table.from_pydict({c: [r[c] for r in rows] for c in columns}, schema=schema)
        path = out / "dataset.parquet"
        pq.write_table(table, path)
        return path
    if fmt == "avro":
        import fastavro

        names = [avro_field_name(c) for c in columns]
        if len(set(names)) != len(names):
            raise ValueError("feature names collide once '.' is replaced by '__' for Avro")
        types_a = {"user_id": "string", "window_end_ms": "long", "label": "int"}
        schema_a = {"type": "record", "name": "PitRow", "namespace": "io.streamscore.backfill",
                    "doc": f"feature_set_version {spec.version}",
                    "fields": [{"name": n, "type": types_a.get(c, "double"), "doc": c} for n, c in zip(names, columns, strict=True)]}
        path = out / "dataset.avro"
        with open(path, "wb") as fh:
            fastavro.writer(fh, fastavro.parse_schema(schema_a),
                            ({n: r[c] for n, c in zip(names, columns, strict=True)} for r in rows), codec="deflate")
        return path
    raise ValueError(f"unknown format {fmt!r}")


def backfill(spec: FeatureSpec, events: Iterable[dict[str, Any]], out: Path, fmt: str = "parquet",
             source: dict[str, Any] | None = None, invalid: Counter[str] | None = None) -> dict[str, Any]:
    """Compute and write the dataset and ``manifest.json`` under ``out``; return the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    staging = out / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    events = list(events)
    stamps = [int(ev["ts_ms"]) for ev in events]
    try:
        rows, accepted, late = compute_rows(spec, events, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    path = write_dataset(rows, spec, out, fmt)
    manifest = {
        "fingerprint": dataset_fingerprint(rows),
        "rows": len(rows),
        "time_range": time_range(rows),  # of window_end_ms
        "event_time_range": [min(stamps), max(stamps)] if stamps else None,
        "feature_set_version": spec.version,
        "feature_names": list(spec.model_feature_names),
        "columns": list(ID_COLUMNS) + list(spec.model_feature_names),
        "label": f"user clicks in [window_end_ms, window_end_ms + {spec.group(spec.scoring_groups[0]).window.step_ms})",
        "positives": sum(r["label"] for r in rows),
        "format": fmt,
        "path": path.name,
        "events": {"accepted": accepted, "late": late, "invalid": dict(invalid or {})},
        "source": source or {},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"wrote {len(rows)} rows to {path} (fingerprint {manifest['fingerprint']})")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamscore backfill", description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--avro-file", type=Path, help="Avro container file of events (arrival = file order)")
    src.add_argument("--bootstrap", help="Kafka bootstrap servers (with --topic and the offset range)")
    ap.add_argument("--topic", default="events", help="Kafka topic (default events)")
    ap.add_argument("--start-offset", type=int, default=0, help="first offset of each partition (default 0)")
    ap.add_argument("--end-offset", type=int, help="offset after the last one read, per partition (required with --bootstrap)")
    ap.add_argument("--partition", type=int, action="append", help="only this partition (repeatable; default all)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--format", choices=("parquet", "avro"), default="parquet", help="dataset format (default parquet)")
    ap.add_argument("--spec", type=Path, help="feature spec YAML (default: the packaged spec)")
    args = ap.parse_args(argv)
    spec = load_spec(args.spec)
    invalid: Counter[str] = Counter()
    t0 = time.monotonic()
    if args.avro_file:
        if not args.avro_file.exists():
            ap.error(f"no such file: {args.avro_file}")
        events = list(validate_records(read_avro_events(args.avro_file), invalid))
        source: dict[str, Any] = {"avro_file": str(args.avro_file)}
    else:
        if args.end_offset is None:
            ap.error("--bootstrap needs --end-offset")
        records = read_kafka_range(args.bootstrap, args.topic, args.start_offset, args.end_offset,
                                   partitions=args.partition)
        events = list(decode_records(records, invalid))
        source = {"bootstrap": args.bootstrap, "topic": args.topic, "start_offset": args.start_offset,
                  "end_offset": args.end_offset, "partitions": args.partition}
    log(f"read {len(events)} valid events, {sum(invalid.values())} invalid ({time.monotonic() - t0:.1f}s)")
    manifest = backfill(spec, events, args.out, args.format, source, invalid)
    print(json.dumps({k: manifest[k] for k in ("fingerprint", "rows", "time_range", "feature_set_version", "path")}
                     | {"out": str(args.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
