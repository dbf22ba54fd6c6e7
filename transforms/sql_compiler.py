"""Compiles the feature spec to Flink SQL, so the per-event aggregation runs in the JVM.

Pure string generation: no Flink import. ``jobs/flink_job.py`` executes the statements.
The input view must have the decoded event columns plus ``ts``, a rowtime attribute.

Session groups use ``SESSION(TABLE src PARTITION BY key, DESCRIPTOR(ts), gap)``. Flink
merges session windows whose bounds touch (``TimeWindow.intersects``: ``start <= other.end
AND end >= other.start``), so with the spec's gap two events exactly ``gap_ms`` apart would
share a session, where the reference (and Beam) open a new one. The TVF therefore gets
``gap_ms - 1`` (timestamps are whole milliseconds: ``|a - b| <= gap - 1`` iff ``< gap``)
and ``window_end_ms`` adds the 1 ms back, so it is the reference's ``last ts + gap_ms``;
``window_start_ms`` is the first event's ``ts_ms`` in both. ``window_time`` (Flink's
``window_end - 1 ms``) is then ``window_end_ms - 2``, and Flink fires the session 1 ms of
watermark earlier than the reference: an accepted event exactly ``gap_ms - 1`` after the
session's last one, arriving when the watermark is exactly 1 ms below its ``ts_ms``,
opens a new session in Flink but extends it in the reference.

Allowed lateness: Flink's window TVFs have none, so the source watermark lags the spec
watermark by the spec's largest ``allowed_lateness_ms`` (:func:`source_watermark_ms`):
``CURRENT_WATERMARK(ts)`` is then ``W - max_lateness`` for the spec watermark ``W``, and a
group with lateness ``L`` counts an event when ``ts > CURRENT_WATERMARK(ts) + (max_lateness
- L)`` (:func:`group_input_query`), the reference's ``ts > W - L``. Every counted event is
past the Flink watermark, so no window TVF drops it; every window closes at ``end +
max_lateness`` of spec watermark, its content is the reference's.

>>> from transforms.spec import load_spec
>>> sql = group_query(load_spec().group("user_tumble_10s"), "accepted_events")
>>> "TUMBLE(TABLE accepted_events" in sql
True
"""

from __future__ import annotations

from transforms.spec import CATEGORY_FIELD, PAIR_SEPARATOR, Feature, FeatureGroup, FeatureSpec


def interval(ms: int) -> str:
    """A Flink SQL interval literal for ``ms`` milliseconds (any length under 100 days).

    >>> interval(61500)
    "INTERVAL '0 00:01:01.500' DAY TO SECOND(3)"
    """
    days, rest = divmod(ms, 86_400_000)
    hours, rest = divmod(rest, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    if days > 99:
        raise ValueError(f"interval {ms} ms too long")
    return f"INTERVAL '{days} {hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}' DAY TO SECOND(3)"


def epoch_ms(expr: str) -> str:
    """Epoch milliseconds of a TIMESTAMP(3) expression (session time zone must be UTC)."""
    return f"(EXTRACT(EPOCH FROM {expr}) * 1000 + EXTRACT(MILLISECOND FROM {expr}))"


STDDEV_FUNCTION = "stddev_pop_stable"  # registered by jobs/flink_job.py from the UDF jar


def _q(name: str) -> str:
    return f"`{name}`"


def _col(f: Feature, suffix: str = "") -> str:
    return f"__{f.name}{suffix}"


def _filter(f: Feature) -> str:
    return f" FILTER (WHERE event_type = '{f.event_type}')" if f.event_type else ""


def _inner(f: Feature) -> list[str]:
    flt, fld = _filter(f), _q(f.field) if f.field else ""
    if f.agg == "count":
        return [f"COUNT(*){flt} AS {_col(f)}"]
    if f.agg == "distinct_count":
        return [f"COUNT(DISTINCT {fld}){flt} AS {_col(f)}"]
    if f.agg in ("sum", "mean"):
        return [f"COUNT({fld}){flt} AS {_col(f, '_n')}", f"SUM({fld}){flt} AS {_col(f, '_s')}"]
    if f.agg in ("min", "max", "last"):
        fn = {"min": "MIN", "max": "MAX", "last": "LAST_VALUE"}[f.agg]
        return [f"COUNT({fld}){flt} AS {_col(f, '_n')}", f"{fn}({fld}){flt} AS {_col(f)}"]
    if f.agg == "stddev":  # the JVM UDAF io.streamscore.udf.StddevPop (Welford/Chan)
        return [f"COUNT({fld}){flt} AS {_col(f, '_n')}", f"{STDDEV_FUNCTION}({fld}){flt} AS {_col(f)}"]
    raise ValueError(f"no inner aggregate for {f.agg}")


def _outer(f: Feature, by_name: dict[str, Feature]) -> str:
    d = f"CAST({f.default!r} AS DOUBLE)"
    if f.agg in ("count", "distinct_count"):
        return f"CAST({_col(f)} AS DOUBLE)"
    if f.agg == "sum":
        return f"CASE WHEN {_col(f, '_n')} = 0 THEN CAST(0.0 AS DOUBLE) ELSE CAST({_col(f, '_s')} AS DOUBLE) END"
    if f.agg == "mean":
        return f"CASE WHEN {_col(f, '_n')} = 0 THEN {d} ELSE {_col(f, '_s')} / {_col(f, '_n')} END"
    if f.agg in ("min", "max", "last"):
        return f"CASE WHEN {_col(f, '_n')} = 0 THEN {d} ELSE CAST({_col(f)} AS DOUBLE) END"
    if f.agg == "stddev":
        return f"CASE WHEN {_col(f, '_n')} = 0 THEN {d} ELSE {_col(f)} END"
    if f.agg == "ratio":
        num = _outer(by_name[f.numerator], by_name)  # type: ignore[index]
        den = _outer(by_name[f.denominator], by_name)  # type: ignore[index]
        return f"CASE WHEN ({den}) = 0 THEN {d} ELSE ({num}) / ({den}) END"
    raise ValueError(f"no outer expression for {f.agg}")


def source_watermark_ms(spec: FeatureSpec) -> int:
    """How far the Flink source watermark lags the latest event time."""
    return spec.watermark_delay_ms + spec.max_allowed_lateness_ms


def _escaped(column: str) -> str:
    """SQL twin of ``spec.escape_key_part`` (SQL string literals take ``\\`` as is)."""
    return f"REPLACE(REPLACE({_q(column)}, '\\', '\\\\'), '{PAIR_SEPARATOR}', '\\{PAIR_SEPARATOR}')"


def entity_key_sql(entity: str) -> str:
    """SQL twin of ``spec.entity_key`` for derived keys (the user x item-category pair).

    >>> entity_key_sql("user_category")
    "CONCAT(REPLACE(REPLACE(`user_id`, '\\\\', '\\\\\\\\'), '|', '\\\\|'), '|', REPLACE(REPLACE(`item_category`, '\\\\', '\\\\\\\\'), '|', '\\\\|'))"
    """
    if entity != "user_category":
        raise ValueError(f"entity {entity!r} is an event field, not a derived key")
    return f"CONCAT({_escaped('user_id')}, '{PAIR_SEPARATOR}', {_escaped(CATEGORY_FIELD)})"


def _behind_watermark(lag_ms: int) -> str:
    """``ts`` at or behind the Flink watermark plus ``lag_ms`` (false before any watermark)."""
    shift = f" + {interval(lag_ms)}" if lag_ms else ""
    return f"(CURRENT_WATERMARK(ts) IS NOT NULL AND ts <= CURRENT_WATERMARK(ts){shift})"


def group_input_query(group: FeatureGroup, spec: FeatureSpec, source: str) -> str:
    """The events ``group`` counts, from ``source`` (the events counted by some group, i.e.
    past the Flink watermark): those not late for it, with an entity id for it.

    >>> from transforms.spec import load_spec
    >>> spec = load_spec()
    >>> "item_category` IS NOT NULL" in group_input_query(spec.group("user_category_tumble_30s"), spec, "src")
    True
    """
    cols, where = "*", []
    if group.entity == "user_category":
        cols = f"*, {entity_key_sql(group.entity)} AS {_q(group.key_field)}"
        where.append(f"{_q(CATEGORY_FIELD)} IS NOT NULL")
    lag = spec.max_allowed_lateness_ms - group.allowed_lateness_ms
    if lag:
        where.append(f"NOT {_behind_watermark(lag)}")
    return f"SELECT {cols} FROM {source}" + (" WHERE " + " AND ".join(where) if where else "")


def accepted_condition() -> str:
    """Events some group counts: past the Flink watermark (see the module doc)."""
    return f"NOT {_behind_watermark(0)}"


def late_condition(spec: FeatureSpec) -> str:
    """Events late for at least one group (the dead-lettered ones)."""
    least = min(g.allowed_lateness_ms for g in spec.groups)
    return _behind_watermark(spec.max_allowed_lateness_ms - least)


def late_detail_sql(spec: FeatureSpec) -> str:
    """The dead-letter detail of a late event: the groups it is late for."""
    names = ", ".join(
        f"CASE WHEN {_behind_watermark(spec.max_allowed_lateness_ms - g.allowed_lateness_ms)} THEN '{g.name}' END"
        for g in spec.groups)
    return ("CONCAT('event time at or behind the watermark less allowed lateness, for groups ', "
            f"CONCAT_WS(',', {names}))")


def feature_column(name: str) -> str:
    """Column name of feature ``name`` in a compiled group query."""
    return f"f_{name}"


def session_interval_ms(gap_ms: int) -> int:
    """The gap given to Flink's SESSION TVF for a spec ``gap_ms`` (see the module doc)."""
    return gap_ms - 1


def window_end_shift_ms(group: FeatureGroup) -> int:
    """What ``window_end_ms`` adds to Flink's ``window_end`` (1 for sessions, else 0)."""
    return 0 if group.window.aligned else 1


def window_tvf(group: FeatureGroup, source: str, time_col: str = "ts") -> str:
    """The window TVF call of ``group`` over ``source``.

    >>> from transforms.spec import Feature, Window
    >>> g = FeatureGroup("s", "user", Window("session", gap_ms=30_000), (Feature("n", "count"),))
    >>> window_tvf(g, "src")
    "SESSION(TABLE src PARTITION BY `user_id`, DESCRIPTOR(ts), INTERVAL '0 00:00:29.999' DAY TO SECOND(3))"
    """
    w = group.window
    if w.kind == "session":
        gap = interval(session_interval_ms(w.gap_ms or 0))
        return f"SESSION(TABLE {source} PARTITION BY {_q(group.key_field)}, DESCRIPTOR({time_col}), {gap})"
    if w.kind == "tumbling":
        return f"TUMBLE(TABLE {source}, DESCRIPTOR({time_col}), {interval(w.size_ms)})"
    return f"HOP(TABLE {source}, DESCRIPTOR({time_col}), {interval(w.step_ms)}, {interval(w.size_ms)})"


def group_query(group: FeatureGroup, source: str, attributes: tuple[str, ...] = ()) -> str:
    """One windowed aggregation: ``entity_type, entity_id, window_start_ms, window_end_ms,
    window_time, fired_at_ms`` and one DOUBLE ``f_<feature>`` column per feature, then an
    ``attr_<a>`` column per entity attribute in ``attributes`` (``MAX``: the attributes
    are constant per entity; used for fairness subgroups, not as features)."""
    by_name = {f.name: f for f in group.features}
    inner = [c for f in group.features if f.agg != "ratio" for c in _inner(f)]
    inner += [f"MAX({_q(a)}) AS {_q('attr_' + a)}" for a in attributes]
    outer = [f"{_outer(f, by_name)} AS {_q(feature_column(f.name))}" for f in group.features]
    outer += [_q("attr_" + a) for a in attributes]
    key = _q(group.key_field)
    fired = "CAST(CURRENT_ROW_TIMESTAMP() AS TIMESTAMP(3))"
    shift = window_end_shift_ms(group)
    end = f"CAST({epoch_ms('window_end')} AS BIGINT)" + (f" + {shift}" if shift else "")
    return (
        f"SELECT '{group.entity}' AS entity_type, entity_id, "
        f"CAST({epoch_ms('window_start')} AS BIGINT) AS window_start_ms, "
        f"{end} AS window_end_ms, window_time, "
        f"CAST({epoch_ms(fired)} AS BIGINT) AS fired_at_ms, "
        + ", ".join(outer)
        + f" FROM (SELECT {key} AS entity_id, window_start, window_end, window_time, "
        + ", ".join(inner)
        + f" FROM TABLE({window_tvf(group, source)}) "
        f"GROUP BY {key}, window_start, window_end, window_time)"
    )


def snapshot_query(group: FeatureGroup, view: str, feature_set_version: str, schema_version: int = 1) -> str:
    """Rows of the ``feature-snapshots`` sink (schemas/feature_snapshot.v1.avsc order)."""
    pairs = ", ".join(f"'{n}', {_q(feature_column(n))}" for n in group.feature_names)
    return (
        f"SELECT entity_type, entity_id, '{group.name}' AS feature_group, window_start_ms, "
        f"window_end_ms, MAP[{pairs}] AS features, '{feature_set_version}' AS feature_set_version, "
        f"{schema_version} AS schema_version FROM {view}"
    )


def model_input_columns(spec: FeatureSpec) -> list[str]:
    """Column names of the model input query, in model feature order."""
    return [f"g{i}_{n}" for i, g in enumerate(spec.scoring_groups) for n in spec.group(g).feature_names]


def model_input_query(spec: FeatureSpec, views: dict[str, str], attributes: tuple[str, ...] = ()) -> str:
    """Joins the scoring groups' views on entity and window end (an interval join on the
    window rowtime, so state is freed by the watermark): ``user_id, window_start_ms,
    window_end_ms, window_time, fired_at_ms``, the ``attributes`` (from the first group's
    ``attr_<a>`` columns), then the model input columns."""
    names = list(spec.scoring_groups)
    cols = model_input_columns(spec)
    sel, i_col = [], 0
    for i, g in enumerate(names):
        for n in spec.group(g).feature_names:
            sel.append(f"g{i}.{_q(feature_column(n))} AS {_q(cols[i_col])}")
            i_col += 1
    fired = "g0.fired_at_ms" if len(names) == 1 else "GREATEST(" + ", ".join(f"g{i}.fired_at_ms" for i in range(len(names))) + ")"
    joins = "".join(
        f" JOIN {views[g]} g{i} ON g0.entity_id = g{i}.entity_id AND g0.window_end_ms = g{i}.window_end_ms"
        f" AND g{i}.window_time BETWEEN g0.window_time AND g0.window_time"
        for i, g in enumerate(names) if i > 0
    )
    return (
        f"SELECT g0.entity_id AS user_id, g0.window_start_ms, g0.window_end_ms, g0.window_time, {fired} AS fired_at_ms, "
        + "".join(f"g0.{_q('attr_' + a)} AS {_q(a)}, " for a in attributes)
        + ", ".join(sel) + f" FROM {views[names[0]]} g0" + joins
    )



def label_query(step_ms: int, attribution_ms: int, source: str) -> str:
    """Click windows for the online label join: per user, clicks in
    ``[window_end - attribution_ms, window_end)`` for every end that is a multiple of the
    scoring step (a hop), from a view of click events with a ``ts`` rowtime."""
    return (
        "SELECT user_id, CAST(" + epoch_ms("window_start") + " AS BIGINT) AS window_start_ms, "
        "CAST(" + epoch_ms("window_end") + " AS BIGINT) AS window_end_ms, window_time, "
        f"CAST({epoch_ms('CAST(CURRENT_ROW_TIMESTAMP() AS TIMESTAMP(3))')} AS BIGINT) AS fired_at_ms, "
        "CAST(COUNT(*) AS DOUBLE) AS clicks "
        f"FROM TABLE(HOP(TABLE {source}, DESCRIPTOR(ts), {interval(step_ms)}, {interval(attribution_ms)})) "
        "GROUP BY user_id, window_start, window_end, window_time"
    )


def scoring_input_query(spec: FeatureSpec, views: dict[str, str], labels_view: str | None = None,
                        attributes: tuple[str, ...] = ()) -> str:
    """The rows of the Python scoring operator: ``row_kind, user_id, window_start_ms,
    window_end_ms, fired_at_ms, label_clicks``, the ``attributes`` (fairness subgroups;
    '' when unknown), then the model input columns.

    Without ``labels_view`` every row is a model input row (``row_kind`` 's'). With it,
    the model input is full-outer joined, per user and window end, with the click windows
    ending there (``label_query``): 's' rows carry the clicks of the window ending at
    their end (0 when none), 'l' rows are click windows of users with no model input row
    at that end (features NULL). One operator thus sees both, in order per user."""
    cols = model_input_columns(spec)
    attrs = "".join(f"COALESCE(m.{_q(a)}, '') AS {_q(a)}, " for a in attributes)
    model_input = model_input_query(spec, views, attributes)
    if labels_view is None:
        return ("SELECT 's' AS row_kind, m.user_id, m.window_start_ms, m.window_end_ms, m.fired_at_ms, "
                "CAST(0 AS DOUBLE) AS label_clicks, " + attrs + ", ".join(f"m.{_q(c)}" for c in cols)
                + f" FROM ({model_input}) m")
    return (
        "SELECT CASE WHEN m.user_id IS NULL THEN 'l' ELSE 's' END AS row_kind, "
        "COALESCE(m.user_id, c.user_id) AS user_id, COALESCE(m.window_start_ms, c.window_start_ms) AS window_start_ms, "
        "COALESCE(m.window_end_ms, c.window_end_ms) AS window_end_ms, "
        "COALESCE(m.fired_at_ms, c.fired_at_ms) AS fired_at_ms, COALESCE(c.clicks, CAST(0 AS DOUBLE)) AS label_clicks, "
        + attrs + ", ".join(f"m.{_q(c)}" for c in cols)
        + f" FROM ({model_input}) m FULL OUTER JOIN {labels_view} c"
        " ON m.user_id = c.user_id AND m.window_end_ms = c.window_end_ms"
        " AND c.window_time BETWEEN m.window_time AND m.window_time"
    )
