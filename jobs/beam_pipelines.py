"""Apache Beam compilation of the feature spec: batch (backfills) and streaming.

Every group becomes ``accepted by the group, keyed by its entity -> WindowInto(Fixed|
Sliding|Sessions) -> CombinePerKey(GroupCombineFn)``; the CombineFn delegates to
``GroupAggregator``, so no feature is re-implemented. Elements are ``(seq, event,
late_groups)`` with ``seq`` the arrival index and ``late_groups`` the groups the event is
late for (it counts in the others); events without an entity id for a group (the user x
item-category pair without a category) are left out of it (``FeatureGroup.key``).

Lateness (the reference rule: late for a group when ``ts_ms <= max(ts_ms so far) -
watermark_delay_ms - allowed_lateness_ms``) is a sequential property of arrival order:

* batch: :func:`split_late` applies ``reference.mark_late_groups`` before the pipeline;
* streaming: :class:`LateSplitter`, a stateful DoFn on one key, applies the same rule in
  arrival order and tags events late for any group to a ``late`` dead-letter output (one
  key: a serial step, as the spec's watermark is global). Beam's own lateness is per
  window (dropped once the watermark passes the window end + ``allowed_lateness``, here
  0) and looser than the spec's per-event rule; the Beam watermark must not run ahead of
  the spec watermark less the largest allowed lateness (:func:`reference_test_stream`
  advances it to exactly ``max_ts - delay - max lateness``), so an accepted event never
  meets a fired window.

ReadFromKafka is not used (apache/beam#22809: it hangs on the DirectRunner).
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.coders import VarIntCoder
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pvalue import TaggedOutput
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms import window as bwindow
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.utils.timestamp import Duration, Timestamp

from transforms.aggregates import Acc, GroupAggregator
from transforms.codecs import DeadLetterReason
from transforms.pit import label_step_ms, make_row
from transforms.reference import FeatureOutput, late_groups, mark_late_groups
from transforms.spec import FeatureGroup, FeatureSpec, Window

SeqEvent = tuple[int, dict[str, Any]]
Tagged = tuple[int, dict[str, Any], tuple[str, ...]]  # (seq, event, groups it is late for)
LATE_TAG = "late"
CLICKS_TAG = "clicks:"  # not an identifier, so never a group name


def direct_options(**extra: Any) -> PipelineOptions:
    """DirectRunner, one in-process worker (the machine has few cores)."""
    opts: dict[str, Any] = {"runner": "DirectRunner", "direct_num_workers": 1, "direct_running_mode": "in_memory"}
    opts.update(extra)
    return PipelineOptions(flags=[], **opts)


def event_timestamp(ev: dict[str, Any]) -> Timestamp:
    """The event time ``ts_ms / 1000`` s, built from integer micros (no float rounding)."""
    return Timestamp(micros=int(ev["ts_ms"]) * 1000)


def window_fn(window: Window) -> bwindow.WindowFn:
    """Beam windows equal to ``reference.window_starts``: ``[k*step, k*step + size)``; for
    sessions, ``Sessions(gap)``: Beam merges the ``[ts, ts + gap)`` windows of a key that
    overlap (``end > start``, so events exactly ``gap`` apart stay apart), the reference's
    ``reference.sessions``; the merged window starts at the session's first event."""
    if window.kind == "session":
        return bwindow.Sessions(Duration(micros=(window.gap_ms or 0) * 1000))
    size = Duration(micros=window.size_ms * 1000)
    if window.kind == "tumbling":
        return bwindow.FixedWindows(size)
    return bwindow.SlidingWindows(size, Duration(micros=window.step_ms * 1000))


class GroupCombineFn(beam.CombineFn):
    """``beam.CombineFn`` over ``(seq, event)`` delegating to ``GroupAggregator``."""

    def __init__(self, group: FeatureGroup) -> None:
        self.group = group
        self._agg = GroupAggregator(group)

    def create_accumulator(self) -> Acc:
        return self._agg.create()

    def add_input(self, acc: Acc, element: SeqEvent) -> Acc:
        seq, ev = element
        self._agg.add(acc, ev, seq)
        return acc

    def merge_accumulators(self, accumulators: Iterable[Acc]) -> Acc:
        merged: Acc | None = None
        for acc in accumulators:
            merged = acc if merged is None else self._agg.merge(merged, acc)
        return self._agg.create() if merged is None else merged

    def extract_output(self, acc: Acc) -> dict[str, float]:
        return self._agg.result(acc)


def _for_group(element: Tagged, group: FeatureGroup) -> Iterator[bwindow.TimestampedValue]:
    """``(entity, (seq, event))`` at the event time, when ``group`` counts the event."""
    seq, ev, late = element
    if group.name in late:
        return
    key = group.key(ev)
    if key is not None:
        yield bwindow.TimestampedValue((key, (seq, ev)), event_timestamp(ev))


class _WithWindowStart(beam.DoFn):
    def process(self, kv: tuple[str, dict[str, float]], win: Any = beam.DoFn.WindowParam) -> Iterator[Any]:
        yield (kv[0], win.start.micros // 1000), kv[1]


class GroupFeatures(beam.PTransform):
    """One group's features: ``(seq, event, late_groups)`` -> ``((entity, window_start_ms), {feature: value})``."""

    def __init__(self, group: FeatureGroup) -> None:
        super().__init__()
        self.group = group

    def expand(self, pcoll: Any) -> Any:
        g = self.group
        return (pcoll
                | "ByEntity" >> beam.FlatMap(_for_group, g)
                | "Window" >> beam.WindowInto(window_fn(g.window), allowed_lateness=Duration(0))
                | "Combine" >> beam.CombinePerKey(GroupCombineFn(g))
                | "WindowStart" >> beam.ParDo(_WithWindowStart()))


class ComputeFeatures(beam.PTransform):
    """Every group of the spec (or ``groups``): a dict ``{group_name: PCollection}``."""

    def __init__(self, spec: FeatureSpec, groups: Iterable[str] | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.groups = tuple(groups) if groups is not None else tuple(g.name for g in spec.groups)

    def expand(self, pcoll: Any) -> dict[str, Any]:
        return {name: pcoll | f"Group[{name}]" >> GroupFeatures(self.spec.group(name)) for name in self.groups}


def split_late(spec: FeatureSpec, events: Iterable[dict[str, Any]]) -> tuple[list[Tagged], list[dict[str, Any]]]:
    """Batch lateness by ``reference.mark_late_groups``: ``(tagged, late)``, the events
    counted by at least one group as ``(seq, event, late_groups)``, and the events late
    for at least one group."""
    tagged: list[Tagged] = []
    late: list[dict[str, Any]] = []
    n_groups = len(spec.groups)
    for seq, (ev, groups) in enumerate(mark_late_groups(spec, events)):
        if groups:
            late.append(ev)
        if len(groups) < n_groups:
            tagged.append((seq, ev, groups))
    return tagged, late


def _key_by_end(kv: tuple[tuple[str, int], dict[str, float]], size_ms: int) -> Any:
    (entity, start), feats = kv
    return (entity, start + size_ms), feats


def _click_label_key(element: Tagged, group: FeatureGroup, step_ms: int) -> Iterator[Any]:
    """Clicks counted by the first scoring group (all scoring groups share one lateness)."""
    _seq, ev, late = element
    key = group.key(ev)
    if ev["event_type"] == "click" and group.name not in late and key is not None:
        ts = int(ev["ts_ms"])
        yield (key, ts - ts % step_ms), 1  # the row whose label window holds it


def _to_row(kv: tuple[tuple[str, int], dict[str, list[Any]]], spec: FeatureSpec) -> Iterator[dict[str, Any]]:
    (entity, end), grouped = kv
    vec: list[float] = []
    for name in spec.scoring_groups:
        hits = grouped.get(name) or []
        if not hits:
            return  # no window of this group ends here for the entity: no model row
        if len(hits) > 1:
            raise RuntimeError(f"group {name}: {len(hits)} windows for ({entity}, end {end})")
        vec.extend(hits[0][f] for f in spec.group(name).feature_names)
    yield make_row(spec, entity, end, int(bool(grouped.get(CLICKS_TAG))), vec)


class PitRows(beam.PTransform):
    """Point-in-time rows (as ``transforms.pit.pit_rows``) from ``(seq, event, late_groups)``."""

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__()
        self.spec = spec

    def expand(self, pcoll: Any) -> Any:
        spec = self.spec
        feats = pcoll | "Features" >> ComputeFeatures(spec, spec.scoring_groups)
        tagged = {}
        for name, pc in feats.items():
            tagged[name] = (pc
                            | f"ByEnd[{name}]" >> beam.Map(_key_by_end, spec.group(name).window.size_ms)
                            | f"Global[{name}]" >> beam.WindowInto(bwindow.GlobalWindows()))
        first = spec.group(spec.scoring_groups[0])
        tagged[CLICKS_TAG] = pcoll | "Labels" >> beam.FlatMap(_click_label_key, first, label_step_ms(spec))
        return tagged | "Join" >> beam.CoGroupByKey() | "Rows" >> beam.FlatMap(_to_row, spec)


def _feature_line(kv: tuple[tuple[str, int], dict[str, float]], group: str) -> str:
    (entity, start), feats = kv
    return json.dumps([group, entity, start, feats])


def write_json_lines(pcoll: Any, prefix: str) -> Any:
    return pcoll | "WriteJson" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl")


def read_json_lines(prefix: str) -> Iterator[Any]:
    for path in sorted(glob.glob(f"{prefix}*.jsonl")):
        with open(path) as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)


def run_features(spec: FeatureSpec, events: Iterable[dict[str, Any]], options: PipelineOptions | None = None) -> FeatureOutput:
    """The batch pipeline on the DirectRunner, collected into a reference ``FeatureOutput``."""
    tagged, late = split_late(spec, events)
    with tempfile.TemporaryDirectory(prefix="streamscore-beam-") as tmp:
        prefix = os.path.join(tmp, "features")
        with beam.Pipeline(options=options or direct_options()) as p:
            feats = p | "Events" >> beam.Create(tagged) | "Features" >> ComputeFeatures(spec)
            lines = [pc
                     | f"Global[{name}]" >> beam.WindowInto(bwindow.GlobalWindows())
                     | f"Json[{name}]" >> beam.Map(_feature_line, name) for name, pc in feats.items()]
            write_json_lines(lines | "All" >> beam.Flatten(), prefix)
        groups: dict[str, dict[tuple[str, int], dict[str, float]]] = {g.name: {} for g in spec.groups}
        for group, entity, start, vals in read_json_lines(prefix):
            groups[group][(entity, int(start))] = vals
    for name, res in groups.items():
        groups[name] = dict(sorted(res.items(), key=lambda kv: (kv[0][1], kv[0][0])))
    return FeatureOutput(groups=groups, late=late, accepted=sum(1 for t in tagged if not t[2]))


# --- streaming -------------------------------------------------------------------------


class LateSplitter(beam.DoFn):
    """Stateful DoFn on a single key: the reference lateness rule in arrival order.

    Input ``(key, (seq, event))``; main output ``(seq, event, late_groups)`` keeping its
    timestamp, for events some group counts; ``late`` output a dead-letter dict ``{reason,
    detail, watermark_ms, groups, seq, event}`` for events late for at least one group.
    """

    MAX_TS = ReadModifyWriteStateSpec("max_ts_ms", VarIntCoder())

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__()
        self.spec = spec

    def process(self, element: tuple[Any, SeqEvent], max_ts: Any = beam.DoFn.StateParam(MAX_TS)) -> Iterator[Any]:
        seq, ev = element[1]
        ts = int(ev["ts_ms"])
        cur = max_ts.read()
        wm = None if cur is None else cur - self.spec.watermark_delay_ms
        late = late_groups(self.spec, wm, ts)
        if late:
            yield TaggedOutput(LATE_TAG, {"reason": DeadLetterReason.LATE.value, "seq": seq, "event": ev,
                                          "watermark_ms": wm, "groups": list(late),
                                          "detail": late_detail(ts, wm, late)})
        if cur is None or ts > cur:
            max_ts.write(ts)
        if len(late) < len(self.spec.groups):
            yield seq, ev, late  # keeps its event timestamp


def late_detail(ts_ms: int, watermark_ms: int | None, groups: Iterable[str]) -> str:
    """The dead-letter detail of an event late for ``groups``."""
    return f"ts_ms {ts_ms} <= watermark {watermark_ms} - allowed lateness, for groups {','.join(groups)}"


def _single_key(element: SeqEvent) -> tuple[int, SeqEvent]:
    return 0, element


class StreamingFeatures(beam.PTransform):
    """Streaming features: ``{group_name: PCollection, "late": dead-letters}`` from
    timestamped ``(seq, event)`` in arrival order; windows fire on the Beam watermark."""

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__()
        self.spec = spec

    def expand(self, pcoll: Any) -> dict[str, Any]:
        split = (pcoll
                 | "OneKey" >> beam.Map(_single_key).with_output_types(
                     beam.typehints.Tuple[int, beam.typehints.Any])
                 | "Lateness" >> beam.ParDo(LateSplitter(self.spec)).with_outputs(
                     LATE_TAG, main="accepted"))
        out = dict(split.accepted | "Features" >> ComputeFeatures(self.spec))
        out[LATE_TAG] = split[LATE_TAG]
        return out


def reference_test_stream(spec: FeatureSpec, events: Iterable[dict[str, Any]]) -> TestStream:
    """A TestStream of ``(seq, event)`` in arrival order whose watermark follows the spec
    less the largest allowed lateness: after each event it advances to ``max(ts_ms) -
    watermark_delay_ms - max_allowed_lateness_ms`` (when that grows), then to infinity."""
    stream = TestStream()
    max_ts: int | None = None
    wm: int | None = None
    lag_ms = spec.watermark_delay_ms + spec.max_allowed_lateness_ms
    for seq, ev in enumerate(events):
        stream.add_elements([bwindow.TimestampedValue((seq, ev), event_timestamp(ev))])
        ts = int(ev["ts_ms"])
        max_ts = ts if max_ts is None else max(max_ts, ts)
        if wm is None or max_ts - lag_ms > wm:
            wm = max_ts - lag_ms
            stream.advance_watermark_to(Timestamp(micros=wm * 1000))
    return stream.advance_watermark_to_infinity()
