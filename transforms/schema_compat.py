"""Avro schema compatibility: can a reader schema read what a writer schema wrote?

A pure check of the resolution rules of the Avro specification on schema JSON (as parsed
from ``.avsc`` files): names of records, enums and fixed types match (or the writer's
full name is among the reader's aliases); a reader field the writer lacks (by name or by
one of the reader field's aliases) needs a default; a type change must be a legal
promotion (int -> long/float/double, long -> float/double, float -> double,
string <-> bytes); every enum symbol the writer may write is one the reader knows (or the
reader's enum has a default); fixed sizes agree; every branch of a writer union resolves
against the reader. Writer fields the reader lacks are skipped, which is legal.

>>> w = {"type": "record", "name": "E", "fields": [{"name": "a", "type": "int"}]}
>>> r = {"type": "record", "name": "E", "fields": [{"name": "a", "type": "long"},
...      {"name": "b", "type": ["null", "string"], "default": None}]}
>>> check_compatibility(r, w)
[]
>>> check_compatibility(w, {**w, "fields": [{"name": "a", "type": "string"}]})
['E.a: writer type string cannot be read as int']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
NAMED = frozenset({"record", "error", "enum", "fixed"})
PROMOTIONS = {
    "int": frozenset({"long", "float", "double"}),
    "long": frozenset({"float", "double"}),
    "float": frozenset({"double"}),
    "string": frozenset({"bytes"}),
    "bytes": frozenset({"string"}),
}


def full_name(name: str, namespace: str | None) -> str:
    """An Avro name qualified by its namespace (a dotted name is already full)."""
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _named_types(schema: Any, namespace: str | None = None, out: dict[str, dict[str, Any]] | None = None
                 ) -> dict[str, dict[str, Any]]:
    """Every named type defined in ``schema``, by full name (namespaces inherited)."""
    out = {} if out is None else out
    if isinstance(schema, list):
        for branch in schema:
            _named_types(branch, namespace, out)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in NAMED:
            full = full_name(str(schema["name"]), schema.get("namespace", namespace))
            out[full] = {**schema, "_full_name": full}
            inner_ns = full.rpartition(".")[0] or None
            for field in schema.get("fields", []) if kind in ("record", "error") else []:
                _named_types(field["type"], inner_ns, out)
        elif kind in ("array", "map"):
            _named_types(schema["items" if kind == "array" else "values"], namespace, out)
        elif isinstance(kind, dict | list):
            _named_types(kind, namespace, out)
    return out


class _Side:
    """One schema with its named types, resolving references to their definitions."""

    def __init__(self, schema: Any) -> None:
        self.types = _named_types(schema)

    def expand(self, schema: Any, namespace: str | None) -> Any:
        if isinstance(schema, str) and schema not in PRIMITIVES:
            for candidate in (full_name(schema, namespace), schema):
                if candidate in self.types:
                    return self.types[candidate]
            raise ValueError(f"unknown type name {schema!r}")
        if isinstance(schema, dict):
            kind = schema.get("type")
            if kind in NAMED:
                full = full_name(str(schema["name"]), schema.get("namespace", namespace))
                return self.types.get(full, schema)
            if isinstance(kind, str) and kind in PRIMITIVES:
                return kind  # {"type": "long", "logicalType": ...}: the underlying type
            if isinstance(kind, str) and kind not in ("array", "map") or isinstance(kind, dict | list):
                return self.expand(kind, namespace)
        return schema


def _kind(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, str):
        return schema
    return str(schema.get("type"))


def _label(schema: Any) -> str:
    kind = _kind(schema)
    return f"{kind} {schema['_full_name']}" if kind in NAMED and isinstance(schema, dict) and "_full_name" in schema \
        else kind


def _names_match(reader: dict[str, Any], writer: dict[str, Any]) -> bool:
    r_full, w_full = reader.get("_full_name", reader["name"]), writer.get("_full_name", writer["name"])
    if r_full == w_full:
        return True
    r_ns = str(r_full).rpartition(".")[0] or None
    return w_full in {full_name(str(a), r_ns) for a in reader.get("aliases", [])}


def _ns(schema: Any) -> str | None:
    full = schema.get("_full_name") if isinstance(schema, dict) else None
    return str(full).rpartition(".")[0] or None if full else None


class _Checker:
    def __init__(self, reader: Any, writer: Any) -> None:
        self.r, self.w = _Side(reader), _Side(writer)
        self.seen: set[tuple[str, str]] = set()
        self.problems: list[str] = []

    def matches(self, r: Any, w: Any) -> bool:
        """Avro's branch selection: same kind (and name, for named types) or a promotion."""
        rk, wk = _kind(r), _kind(w)
        if rk in NAMED and wk in NAMED:
            return (rk == wk or {rk, wk} <= {"record", "error"}) and _names_match(r, w)
        return rk == wk or rk in PROMOTIONS.get(wk, frozenset())

    def check(self, r_raw: Any, w_raw: Any, path: str, r_ns: str | None, w_ns: str | None) -> None:
        r, w = self.r.expand(r_raw, r_ns), self.w.expand(w_raw, w_ns)
        rk, wk = _kind(r), _kind(w)
        if wk == "union":
            for i, branch in enumerate(w):
                self.check(r, branch, f"{path}[writer branch {i}]", _ns(r) or r_ns, w_ns)
            return
        if rk == "union":
            expanded = [self.r.expand(b, r_ns) for b in r]
            for branch in expanded:
                if self.matches(branch, w):
                    self.check(branch, w, path, r_ns, w_ns)
                    return
            self.problems.append(f"{path}: writer type {_label(w)} matches no branch of the reader union "
                                 f"[{', '.join(_label(b) for b in expanded)}]")
            return
        if rk in NAMED or wk in NAMED:
            self.check_named(r, w, path)
        elif rk in ("array", "map") and rk == wk:
            key = "items" if rk == "array" else "values"
            self.check(r[key], w[key], f"{path}[]", r_ns, w_ns)
        elif rk != wk and rk not in PROMOTIONS.get(wk, frozenset()):
            self.problems.append(f"{path}: writer type {_label(w)} cannot be read as {_label(r)}")

    def check_named(self, r: Any, w: Any, path: str) -> None:
        rk, wk = _kind(r), _kind(w)
        if not (rk == wk or {rk, wk} <= {"record", "error"}):
            self.problems.append(f"{path}: writer type {_label(w)} cannot be read as {_label(r)}")
            return
        if not _names_match(r, w):
            self.problems.append(f"{path}: writer {wk} {w.get('_full_name', w['name'])} does not match reader "
                                 f"{rk} {r.get('_full_name', r['name'])} (names differ and no reader alias)")
            return
        if rk == "fixed":
            if r.get("size") != w.get("size"):
                self.problems.append(f"{path}: fixed size {w.get('size')} cannot be read as size {r.get('size')}")
        elif rk == "enum":
            missing = [s for s in w.get("symbols", []) if s not in set(r.get("symbols", []))]
            if missing and "default" not in r:
                self.problems.append(f"{path}: enum symbols {missing} the writer may use are unknown to the reader "
                                     "(and the reader's enum has no default)")
        else:
            self.check_record(r, w, path)

    def check_record(self, r: dict[str, Any], w: dict[str, Any], path: str) -> None:
        key = (str(r.get("_full_name", r["name"])), str(w.get("_full_name", w["name"])))
        if key in self.seen:  # recursive type, already being checked
            return
        self.seen.add(key)
        w_fields = {f["name"]: f for f in w.get("fields", [])}
        r_ns, w_ns = _ns(r), _ns(w)
        for field in r.get("fields", []):
            names = [field["name"], *field.get("aliases", [])]
            match = next((w_fields[n] for n in names if n in w_fields), None)
            where = f"{path}.{field['name']}" if path else field["name"]
            if match is None:
                if "default" not in field:
                    self.problems.append(f"{where}: reader field has no default and the writer has no field "
                                         f"{field['name']!r} (nor an alias of it)")
                continue
            self.check(field["type"], match["type"], where, r_ns, w_ns)


def check_compatibility(reader: Any, writer: Any) -> list[str]:
    """Every reason ``reader`` cannot read data written with ``writer`` (empty: compatible)."""
    checker = _Checker(reader, writer)
    try:
        top = checker.r.expand(reader, None)
        checker.check(reader, writer, str(top.get("name", "")) if isinstance(top, dict) else "", None, None)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return [f"malformed schema: {type(exc).__name__}: {exc}"]
    return checker.problems


def load(path: Path) -> Any:
    """One ``.avsc`` file's JSON."""
    return json.loads(path.read_text())


def version_of(path: Path, name: str) -> int | None:
    """N of ``<name>.vN.avsc``, None for another file name."""
    tail = path.name[len(name) + 2:-len(".avsc")] if path.name.startswith(f"{name}.v") else ""
    return int(tail) if path.name.endswith(".avsc") and tail.isdigit() and not tail.startswith("0") else None


def incompatible_writers(schema_dir: Path, name: str = "event", reader_version: int | None = None
                         ) -> dict[int, list[str]]:
    """For each ``<name>.vN.avsc`` in ``schema_dir`` the reader (``reader_version``, default
    the newest) cannot read: N -> its problems. Empty when every version is readable."""
    paths = {v: p for p in schema_dir.glob(f"{name}.v*.avsc") if (v := version_of(p, name)) is not None}
    if not paths:
        raise FileNotFoundError(f"no schema {name}.v*.avsc in {schema_dir}")
    reader_v = max(paths) if reader_version is None else reader_version
    if reader_v not in paths:
        raise FileNotFoundError(f"no reader schema {name}.v{reader_v}.avsc in {schema_dir}")
    out: dict[int, list[str]] = {}
    reader = None
    try:
        reader = load(paths[reader_v])
    except (OSError, json.JSONDecodeError) as exc:
        out[reader_v] = [f"cannot read {paths[reader_v].name}: {exc}"]
        return out
    for version, path in sorted(paths.items()):
        try:
            problems = check_compatibility(reader, load(path))
        except (OSError, json.JSONDecodeError) as exc:
            problems = [f"cannot read {path.name}: {exc}"]
        if problems:
            out[version] = problems
    return out
