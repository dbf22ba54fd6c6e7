"""Beam (DirectRunner) compilation of the spec against the reference, the TestStream
watermark/late behaviour, and the backfill command."""

import json
from collections import Counter
from dataclasses import asdict

import apache_beam as beam
import fastavro
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.utils.windowed_value import PaneInfoTiming

from jobs import backfill
from jobs.beam_pipelines import StreamingFeatures, direct_options, reference_test_stream, run_features
from jobs.generator import TrafficConfig, generate_events
from jobs.kafka_io import write_avro_file
from transforms.codecs import encode_event, make_event
from transforms.pit import dataset_fingerprint, pit_dataset
from transforms.reference import compute_features
from transforms.spec import load_spec, parse_spec

SPEC = load_spec()
CFG = TrafficConfig(seed=5, n_users=150, n_items=300, event_rate_per_s=40.0,
                    out_of_order_fraction=0.05, late_fraction=0.01)
EVERY_AGG = parse_spec({
    "watermark_delay_ms": 1500, "scoring": {"entity": "user", "groups": ["u"]},
    "groups": [{"name": "u", "entity": "user", "window": {"kind": "hopping", "size_ms": 20_000, "slide_ms": 5_000},
                "features": [
                    {"name": "n", "agg": "count"},
                    {"name": "clicks", "agg": "count", "event_type": "click"},
                    {"name": "imps", "agg": "count", "event_type": "impression"},
                    {"name": "ctr", "agg": "ratio", "numerator": "clicks", "denominator": "imps", "default": -1.0},
                    {"name": "dsum", "agg": "sum", "field": "dwell_ms", "event_type": "dwell"},
                    {"name": "dmean", "agg": "mean", "field": "dwell_ms", "event_type": "dwell", "default": -2.0},
                    {"name": "dmin", "agg": "min", "field": "dwell_ms", "event_type": "dwell", "default": -3.0},
                    {"name": "dmax", "agg": "max", "field": "dwell_ms"},
                    {"name": "dstd", "agg": "stddev", "field": "dwell_ms", "event_type": "dwell"},
                    {"name": "dlast", "agg": "last", "field": "dwell_ms", "default": -4.0},
                    {"name": "regions", "agg": "distinct_count", "field": "region"}]}]})


SESSION_SPEC = parse_spec({
    "watermark_delay_ms": 2000, "scoring": {"entity": "user", "groups": ["user_tumble_10s"]},
    "groups": [
        {"name": "user_tumble_10s", "entity": "user", "window": {"kind": "tumbling", "size_ms": 10_000},
         "features": [{"name": "n", "agg": "count"}]},
        {"name": "user_session_30s", "entity": "user", "window": {"kind": "session", "gap_ms": 30_000},
         "features": [{"name": "impressions", "agg": "count", "event_type": "impression"},
                      {"name": "clicks", "agg": "count", "event_type": "click"},
                      {"name": "ctr", "agg": "ratio", "numerator": "clicks", "denominator": "impressions"},
                      {"name": "dwell_mean", "agg": "mean", "field": "dwell_ms", "event_type": "dwell"}]},
        {"name": "item_session_3s", "entity": "item", "window": {"kind": "session", "gap_ms": 3_000},
         "features": [{k: v for k, v in asdict(f).items() if v is not None}  # every agg but last (no merge in Flink)
                      for f in EVERY_AGG.groups[0].features if f.agg != "last"]}]})


@pytest.fixture(scope="module")
def events():
    return list(generate_events(3000, CFG))


@pytest.mark.parametrize("spec", [SPEC, EVERY_AGG, SESSION_SPEC], ids=["default", "every_agg", "session"])
def test_batch_equals_reference(events, spec):
    ref = compute_features(spec, events)
    out = run_features(spec, events)
    assert 0 < len(ref.late) < 60 and out.accepted == ref.accepted == len(events) - len(ref.late)
    assert [e["event_id"] for e in out.late] == [e["event_id"] for e in ref.late]
    assert set(out.groups) == set(ref.groups)
    for name, windows in ref.groups.items():
        if name in ref.session_ends:  # many sessions, many of several events (end - start > gap)
            gap = spec.group(name).window.gap_ms
            assert len(windows) > 50 and sum(e - s > gap for (_, s), e in ref.session_ends[name].items()) > 50
        else:
            assert len(windows) > 100
        assert list(out.groups[name]) == list(windows), name  # same windows, same order
        for key, vals in windows.items():
            assert out.groups[name][key] == pytest.approx(vals, rel=1e-9), (name, key)


# --- streaming: hand-written events, one TestStream step per arrival ---------------

STREAM_SPEC = parse_spec({
    "watermark_delay_ms": 2000, "scoring": {"entity": "user", "groups": ["t10", "h20"]},
    "groups": [
        {"name": "t10", "entity": "user", "window": {"kind": "tumbling", "size_ms": 10_000}, "features": [
            {"name": "impressions", "agg": "count", "event_type": "impression"},
            {"name": "clicks", "agg": "count", "event_type": "click"},
            {"name": "ctr", "agg": "ratio", "numerator": "clicks", "denominator": "impressions"},
            {"name": "dwell_last", "agg": "last", "field": "dwell_ms", "event_type": "dwell"}]},
        {"name": "h20", "entity": "user", "window": {"kind": "hopping", "size_ms": 20_000, "slide_ms": 10_000},
         "features": [{"name": "events", "agg": "count"},
                      {"name": "dwell_sum", "agg": "sum", "field": "dwell_ms", "event_type": "dwell"}]}]})
B = 100_000
STREAM_EVENTS = [  # arrival order; watermark after each = max(ts) - 2000
    make_event("a", "u1", "i1", B + 1_000, "impression"),
    make_event("b", "u1", "i1", B + 5_000, "click"),  # wm 103000
    make_event("c", "u1", "i2", B + 4_000, "impression"),  # out of order, 104000 > wm: counted
    make_event("d", "u2", "i1", B + 2_500, "impression"),  # 102500 <= 103000: late
    make_event("e", "u1", "i1", B + 9_000, "dwell", 300.0),  # wm 107000
    make_event("f", "u1", "i1", B + 12_000, "dwell", 500.0),  # wm 110000: window [100 s, 110 s) fires
    make_event("g", "u1", "i1", B + 9_500, "dwell", 700.0),  # late, its window already fired
    make_event("h", "u2", "i1", B + 10_500, "impression"),  # out of order, counted
    make_event("i", "u1", "i1", B + 10_000, "click"),  # ts == watermark: late
    make_event("j", "u2", "i1", B + 25_000, "click"),  # wm 123000
]
T10 = {
    ("u1", B): {"impressions": 2.0, "clicks": 1.0, "ctr": 0.5, "dwell_last": 300.0},
    ("u1", B + 10_000): {"impressions": 0.0, "clicks": 0.0, "ctr": 0.0, "dwell_last": 500.0},
    ("u2", B + 10_000): {"impressions": 1.0, "clicks": 0.0, "ctr": 0.0, "dwell_last": 0.0},
    ("u2", B + 20_000): {"impressions": 0.0, "clicks": 1.0, "ctr": 0.0, "dwell_last": 0.0},
}
H20 = {
    ("u1", B - 10_000): {"events": 4.0, "dwell_sum": 300.0},
    ("u1", B): {"events": 5.0, "dwell_sum": 800.0},
    ("u1", B + 10_000): {"events": 1.0, "dwell_sum": 500.0},
    ("u2", B): {"events": 1.0, "dwell_sum": 0.0},
    ("u2", B + 10_000): {"events": 2.0, "dwell_sum": 0.0},
    ("u2", B + 20_000): {"events": 1.0, "dwell_sum": 0.0},
}
LATE = [("d", 3, 103_000), ("g", 6, 110_000), ("i", 8, 110_000)]  # (event_id, seq, watermark_ms)


class _Pane(beam.DoFn):
    def process(self, kv, pane=beam.DoFn.PaneInfoParam):
        yield kv[0], pane.timing, pane.index


def test_hand_written_expectations_are_the_reference():
    ref = compute_features(STREAM_SPEC, STREAM_EVENTS)
    assert ref.groups == {"t10": T10, "h20": H20}
    assert [e["event_id"] for e in ref.late] == [e for e, _, _ in LATE]


def test_test_stream_watermark_windows_and_late_dead_letters():
    stream = reference_test_stream(STREAM_SPEC, STREAM_EVENTS)
    with TestPipeline(options=direct_options(streaming=True)) as p:
        out = p | stream | StreamingFeatures(STREAM_SPEC)
        assert_that(out["t10"], equal_to(list(T10.items())), label="t10")
        assert_that(out["h20"], equal_to(list(H20.items())), label="h20")
        # every window fires once, on time (the watermark passed its end), never late
        on_time = PaneInfoTiming.ON_TIME
        for name, expected in (("t10", T10), ("h20", H20)):
            assert_that(out[name] | f"Pane[{name}]" >> beam.ParDo(_Pane()),
                        equal_to([(k, on_time, 0) for k in expected]), label=f"pane[{name}]")
        late = out["late"] | beam.Map(lambda d: (d["event"]["event_id"], d["seq"], d["watermark_ms"], d["reason"]))
        assert_that(late, equal_to([(*x, "late") for x in LATE]), label="late")


# --- backfill ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "avro"])
def test_backfill_writes_pit_dataset_and_manifest(tmp_path, fmt, capsys):
    evs = list(generate_events(1200, CFG))
    src = tmp_path / "events.avro"
    write_avro_file(src, evs)
    out = tmp_path / "out"
    assert backfill.main(["--avro-file", str(src), "--out", str(out), "--format", fmt]) == 0
    expected = pit_dataset(SPEC, evs)
    if fmt == "parquet":
        got = pq.read_table(out / "dataset.parquet").to_pylist()
    else:
        with open(out / "dataset.avro", "rb") as fh:
            got = [{k.replace("__", "."): v for k, v in r.items()} for r in fastavro.reader(fh)]
    assert len(got) == len(expected) > 30
    for g, e in zip(got, expected, strict=True):
        assert list(g) == list(e)
        ids = ("user_id", "window_end_ms", "label")
        assert [g[k] for k in ids] == [e[k] for k in ids]
        feats = SPEC.model_feature_names
        assert [g[f] for f in feats] == pytest.approx([e[f] for f in feats], rel=1e-9)
    manifest = json.loads((out / "manifest.json").read_text())
    ends = [r["window_end_ms"] for r in expected]
    assert manifest["fingerprint"] == dataset_fingerprint(expected) == dataset_fingerprint(got)
    assert manifest["rows"] == len(expected)
    assert manifest["time_range"] == [min(ends), max(ends)]
    assert manifest["feature_set_version"] == SPEC.version
    assert manifest["feature_names"] == list(SPEC.model_feature_names)
    assert not (out / ".staging").exists()
    captured = capsys.readouterr()
    assert "[backfill]" in captured.err and json.loads(captured.out)["rows"] == len(expected)


def test_backfill_help(capsys):
    with pytest.raises(SystemExit) as exc:
        backfill.main(["--help"])
    assert exc.value.code == 0 and "--avro-file" in capsys.readouterr().out


class _Msg:
    def __init__(self, p, off, ts, value, headers=None):
        self._p, self._off, self._ts, self._v, self._h = p, off, ts, value, headers

    def error(self):
        return None

    def partition(self):
        return self._p

    def offset(self):
        return self._off

    def timestamp(self):
        return 1, self._ts

    def value(self):
        return self._v

    def headers(self):
        return self._h


class _FakeConsumer:
    """Two partitions, offsets 0..4; record timestamps interleave the partitions."""

    def __init__(self, conf):
        self.log = {p: [_Msg(p, o, 10 * o + p, f"{p}:{o}".encode(), [("schema-version", b"2")] if p else None)
                        for o in range(5)] for p in (0, 1)}
        self.pos = {}

    def list_topics(self, topic, timeout=None):
        part = type("P", (), {"partitions": {0: None, 1: None}, "error": None})()
        return type("M", (), {"topics": {topic: part}})()

    def get_watermark_offsets(self, tp, timeout=None):
        return 0, len(self.log[tp.partition])

    def assign(self, tps):
        self.pos = {tp.partition: tp.offset for tp in tps}

    def consume(self, n, timeout=None):
        out = []
        for p in self.pos:
            out += self.log[p][self.pos[p]:]
            self.pos[p] = len(self.log[p])
        return out

    def position(self, tps):
        return tps

    def close(self):
        pass


def test_bounded_kafka_read_merges_partitions_by_timestamp():
    recs = backfill.read_kafka_range("fake:9092", "events", 1, 4, consumer_factory=_FakeConsumer)
    # offsets [1, 4), by timestamp; the writer version from each record's schema-version header
    assert recs == [(b"0:1", 1), (b"1:1", 2), (b"0:2", 1), (b"1:2", 2), (b"0:3", 1), (b"1:3", 2)]


def test_backfill_decodes_by_the_schema_version_header():
    invalid = Counter()
    good = make_event("e", "u1", "i1", 5_000, "click")
    v2 = {**make_event("e2", "u2", "i2", 6_000, "click"), "item_category": "news"}
    decoded = list(backfill.decode_records(
        [(encode_event(good), 1), (encode_event(v2, 2), 2), (b"\x00", 1), (None, 1), (encode_event(good), None),
         (encode_event(good), 9)], invalid))
    # read as the newest schema: v1 records gain item_category = None, v2 records keep theirs
    assert decoded == [{**good, "item_category": None}, v2]
    assert invalid == {"undecodable": 2, "unknown_schema_version": 2}
