"""The declarative feature spec: feature groups, windows and aggregations, validated on
load, with a fingerprint that versions the feature set.

>>> spec = load_spec()
>>> spec.group("user_tumble_10s").window.kind
'tumbling'
>>> Window("session", gap_ms=30_000).aligned
False
>>> len(spec.version)
16
>>> entity_key("user_category", {"user_id": "u|1", "item_category": "news"})
'u\\\\|1|news'
>>> entity_key("user_category", {"user_id": "u1", "item_category": None}) is None
True
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_SPEC_PATH = Path(__file__).resolve().parent / "specs" / "default.yaml"
# entity -> the event field (or, for the pair, the derived column) a group is keyed by
ENTITY_FIELDS = {"user": "user_id", "item": "item_id", "user_category": "user_category"}
CATEGORY_FIELD = "item_category"  # event.v2; null (or absent, v1) when the item's category is unknown
PAIR_SEPARATOR = "|"
NUMERIC_FIELDS = ("dwell_ms",)
KEY_FIELDS = ("item_id", "user_id", "device", "region")
AGGS = ("count", "sum", "mean", "min", "max", "stddev", "last", "distinct_count", "ratio")
EVENT_TYPES = ("impression", "click", "dwell")
WINDOW_KINDS = ("tumbling", "hopping", "session")


class SpecError(ValueError):
    """The feature spec is invalid."""


def escape_key_part(part: str) -> str:
    """One part of a composite entity id: ``\\`` and ``|`` are backslash-escaped, so the
    joined id is unambiguous (``("a|b", "c")`` and ``("a", "b|c")`` differ)."""
    return part.replace("\\", "\\\\").replace(PAIR_SEPARATOR, "\\" + PAIR_SEPARATOR)


def entity_key(entity: str, event: dict[str, Any]) -> str | None:
    """The entity id of ``event`` for groups keyed by ``entity``; ``None`` when the event
    has none (the user x item-category pair of an event whose ``item_category`` is null or
    absent): such an event is left out of that entity's groups, in every engine.

    The pair's id is ``escape(user_id) + "|" + escape(item_category)``."""
    if entity == "user_category":
        category = event.get(CATEGORY_FIELD)
        if category is None:
            return None
        return escape_key_part(str(event["user_id"])) + PAIR_SEPARATOR + escape_key_part(str(category))
    value = event[ENTITY_FIELDS[entity]]
    return None if value is None else str(value)


@dataclass(frozen=True)
class Window:
    """``tumbling`` (``size_ms``), ``hopping`` (``size_ms``, ``slide_ms``) or ``session``
    (``gap_ms``: a session closes after that long without events of its entity)."""

    kind: str  # tumbling | hopping | session
    size_ms: int = 0
    slide_ms: int | None = None
    gap_ms: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in WINDOW_KINDS:
            raise SpecError(f"window kind {self.kind!r} is not one of {WINDOW_KINDS}")
        if self.kind == "session":
            if self.gap_ms is None or self.gap_ms <= 0 or self.gap_ms % 1000:
                raise SpecError(f"session window gap_ms {self.gap_ms} must be a positive multiple of 1000")
            if self.size_ms or self.slide_ms is not None:
                raise SpecError("session window takes only gap_ms (no size_ms or slide_ms)")
            return
        if self.gap_ms is not None:
            raise SpecError(f"{self.kind} window takes no gap_ms")
        if self.size_ms <= 0 or self.size_ms % 1000:
            raise SpecError(f"window size_ms {self.size_ms} must be a positive multiple of 1000")
        if self.kind == "hopping":
            if not self.slide_ms or self.slide_ms <= 0 or self.slide_ms % 1000:
                raise SpecError("hopping window needs slide_ms, a positive multiple of 1000")
            if self.size_ms % self.slide_ms:
                raise SpecError("hopping window size_ms must be a multiple of slide_ms")
        elif self.slide_ms is not None:
            raise SpecError("tumbling window takes no slide_ms")

    @property
    def aligned(self) -> bool:
        """Whether windows have fixed, entity-independent starts (not sessions)."""
        return self.kind != "session"

    @property
    def step_ms(self) -> int:
        """Distance between consecutive window starts (tumbling/hopping only)."""
        if self.kind == "session":
            raise SpecError("session windows have no fixed step")
        return self.slide_ms if self.kind == "hopping" and self.slide_ms else self.size_ms


@dataclass(frozen=True)
class Feature:
    name: str
    agg: str
    field: str | None = None
    event_type: str | None = None
    numerator: str | None = None
    denominator: str | None = None
    default: float = 0.0


@dataclass(frozen=True)
class FeatureGroup:
    name: str
    entity: str
    window: Window
    features: tuple[Feature, ...]
    # events up to this far behind the watermark still count in this group's windows, which
    # close (fire, once) when the watermark reaches ``window_end + allowed_lateness_ms``
    allowed_lateness_ms: int = 0

    @property
    def key_field(self) -> str:
        return ENTITY_FIELDS[self.entity]

    def key(self, event: dict[str, Any]) -> str | None:
        """This group's entity id of ``event`` (None: the event is not in this group)."""
        return entity_key(self.entity, event)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)


@dataclass(frozen=True)
class FeatureSpec:
    groups: tuple[FeatureGroup, ...]
    scoring_entity: str
    scoring_groups: tuple[str, ...]
    watermark_delay_ms: int
    version: str = field(default="", compare=False)

    @property
    def max_allowed_lateness_ms(self) -> int:
        """The largest allowed lateness of any group: the Flink source watermark lags the
        spec watermark by this much, so every group's windows are still open for it."""
        return max(g.allowed_lateness_ms for g in self.groups)

    @property
    def scoring_lateness_ms(self) -> int:
        """The allowed lateness of the scoring groups (one value; labels use it too)."""
        return self.group(self.scoring_groups[0]).allowed_lateness_ms

    def group(self, name: str) -> FeatureGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise SpecError(f"no feature group {name!r}")

    @property
    def model_feature_names(self) -> tuple[str, ...]:
        """Model input columns, in order: ``<group>.<feature>`` of each scoring group."""
        return tuple(f"{g}.{f}" for g in self.scoring_groups for f in self.group(g).feature_names)


def _feature(group: str, raw: dict[str, Any]) -> Feature:
    where = f"group {group!r} feature {raw.get('name')!r}"
    unknown = set(raw) - {"name", "agg", "field", "event_type", "numerator", "denominator", "default"}
    if unknown:
        raise SpecError(f"{where}: unknown keys {sorted(unknown)}")
    if not raw.get("name") or not str(raw["name"]).isidentifier():
        raise SpecError(f"{where}: name must be an identifier")
    agg = raw.get("agg")
    if agg not in AGGS:
        raise SpecError(f"{where}: agg {agg!r} is not one of {AGGS}")
    fld = raw.get("field")
    if agg in ("sum", "mean", "min", "max", "stddev", "last") and fld not in NUMERIC_FIELDS:
        raise SpecError(f"{where}: {agg} needs a numeric field, one of {NUMERIC_FIELDS}")
    if agg == "distinct_count" and fld not in KEY_FIELDS:
        raise SpecError(f"{where}: distinct_count needs a field, one of {KEY_FIELDS}")
    if agg == "count" and fld is not None:
        raise SpecError(f"{where}: count takes no field")
    if agg == "ratio":
        if not raw.get("numerator") or not raw.get("denominator"):
            raise SpecError(f"{where}: ratio needs numerator and denominator")
        if fld is not None or raw.get("event_type") is not None:
            raise SpecError(f"{where}: ratio takes no field or event_type")
    elif raw.get("numerator") or raw.get("denominator"):
        raise SpecError(f"{where}: only ratio takes numerator/denominator")
    et = raw.get("event_type")
    if et is not None and et not in EVENT_TYPES:
        raise SpecError(f"{where}: event_type {et!r} is not one of {EVENT_TYPES}")
    try:
        default = float(raw.get("default", 0.0))
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{where}: default must be a number") from exc
    return Feature(str(raw["name"]), agg, fld, et, raw.get("numerator"), raw.get("denominator"), default)


def _group(raw: dict[str, Any]) -> FeatureGroup:
    name = raw.get("name")
    if not name or not str(name).isidentifier():
        raise SpecError(f"feature group name {name!r} must be an identifier")
    entity = raw.get("entity")
    if entity not in ENTITY_FIELDS:
        raise SpecError(f"group {name!r}: entity {entity!r} is not one of {sorted(ENTITY_FIELDS)}")
    unknown = set(raw) - {"name", "entity", "window", "features", "allowed_lateness_ms"}
    if unknown:
        raise SpecError(f"group {name!r}: unknown keys {sorted(unknown)}")
    lateness = raw.get("allowed_lateness_ms", 0)
    if isinstance(lateness, bool) or not isinstance(lateness, int) or lateness < 0:
        raise SpecError(f"group {name!r}: allowed_lateness_ms {lateness!r} must be an integer >= 0")
    win = raw.get("window") or {}
    if not isinstance(win, dict):
        raise SpecError(f"group {name!r}: window must be a mapping, not {win!r}")
    try:
        window = Window(str(win.get("kind")), int(win.get("size_ms", 0)),
                        int(win["slide_ms"]) if win.get("slide_ms") is not None else None,
                        int(win["gap_ms"]) if win.get("gap_ms") is not None else None)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, SpecError):
            raise SpecError(f"group {name!r}: {exc}") from exc
        raise SpecError(f"group {name!r}: bad window {win!r}") from exc
    feats = tuple(_feature(name, f) for f in raw.get("features") or ())
    if not feats:
        raise SpecError(f"group {name!r} has no features")
    if window.kind == "session":
        for f in feats:
            if f.agg == "last":  # Flink's LAST_VALUE has no merge(), which merging session windows need
                raise SpecError(f"group {name!r} feature {f.name!r}: agg last is not supported on session windows")
    names = [f.name for f in feats]
    if len(set(names)) != len(names):
        raise SpecError(f"group {name!r} has duplicate feature names")
    plain = {f.name for f in feats if f.agg != "ratio"}
    for f in feats:
        if f.agg == "ratio" and not {f.numerator, f.denominator} <= plain:
            raise SpecError(f"group {name!r}: ratio {f.name!r} must refer to non-ratio features of the group")
    return FeatureGroup(name, entity, window, feats, lateness)


def canonical(spec: FeatureSpec) -> str:
    """Canonical JSON of what defines the features (key order and group order free)."""
    groups = sorted((asdict(g) for g in spec.groups), key=lambda g: g["name"])
    for g in groups:  # unset window fields are left out, so tumbling/hopping versions keep their value
        g["window"] = {k: v for k, v in g["window"].items() if not (k == "gap_ms" and v is None)}
        if not g["allowed_lateness_ms"]:  # as for gap_ms: groups without lateness keep their version
            del g["allowed_lateness_ms"]
    body = {"groups": groups, "scoring": [spec.scoring_entity, list(spec.scoring_groups)],
            "watermark_delay_ms": spec.watermark_delay_ms}
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def parse_spec(raw: dict[str, Any]) -> FeatureSpec:
    if not isinstance(raw, dict):
        raise SpecError("feature spec must be a mapping")
    groups = tuple(_group(g) for g in raw.get("groups") or ())
    if not groups:
        raise SpecError("feature spec has no groups")
    if len({g.name for g in groups}) != len(groups):
        raise SpecError("duplicate feature group names")
    scoring = raw.get("scoring") or {}
    sgroups = tuple(scoring.get("groups") or ())
    sentity = scoring.get("entity", "user")
    by_name = {g.name: g for g in groups}
    if not sgroups:
        raise SpecError("scoring.groups is empty")
    for name in sgroups:
        if name not in by_name:
            raise SpecError(f"scoring group {name!r} is not defined")
        if by_name[name].entity != sentity:
            raise SpecError(f"scoring group {name!r} is not keyed by {sentity}")
        if not by_name[name].window.aligned:
            raise SpecError(f"scoring group {name!r} has {by_name[name].window.kind} windows, whose ends are not "
                            "aligned across entities and groups; only tumbling/hopping groups can be scored")
    steps = {by_name[n].window.step_ms for n in sgroups}
    if len(steps) != 1:
        raise SpecError("scoring groups must all emit at the same step (tumble size == hop slide)")
    if len({by_name[n].allowed_lateness_ms for n in sgroups}) != 1:
        raise SpecError("scoring groups must all have the same allowed_lateness_ms (their windows are joined "
                        "and labelled at one close time)")
    delay = int(raw.get("watermark_delay_ms", 0))
    if delay < 0:
        raise SpecError("watermark_delay_ms must be >= 0")
    spec = FeatureSpec(groups, sentity, sgroups, delay)
    version = hashlib.sha256(canonical(spec).encode()).hexdigest()[:16]
    return FeatureSpec(groups, sentity, sgroups, delay, version)


def load_spec(path: str | Path | None = None) -> FeatureSpec:
    """Load and validate a YAML feature spec (the packaged default when ``path`` is None)."""
    p = Path(path) if path else DEFAULT_SPEC_PATH
    try:
        raw = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"cannot read feature spec {p}: {exc}") from exc
    return parse_spec(raw)
