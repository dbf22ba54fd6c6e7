"""The one strict Avro binary decoding rule for events, shared by every Python engine.

The Flink job's JVM decoder (``io.streamscore.udf.StrictAvro``) implements the same rule
line for line, with the same details; a cross-engine test feeds both one malformed
corpus. A record is undecodable when:

- a varint is cut, or longer than its type allows: a ``long`` has at most 10 bytes and
  its 10th byte is 0 or 1; an ``int`` (enum and union indexes) has at most 5 bytes and its
  5th byte is at most 0x0F: ``<field>: invalid long encoding`` / ``invalid int encoding``;
- a string or bytes length is negative (``<field>: negative length N``) or runs past the
  end (``<field>: truncated``);
- a string is not well-formed UTF-8 (``<field>: invalid UTF-8``): overlong forms,
  surrogates (CESU-8), lone continuation bytes, cut sequences, code points over U+10FFFF;
- an enum or union index is outside its symbols or branches
  (``<field>: enum index 7 outside [0, 3)``), or names a symbol or branch the reader
  lacks;
- a boolean byte is neither 0 nor 1;
- bytes follow the record (``trailing bytes after record``).

Reading a writer schema with another reader schema follows Avro resolution: fields by
name or reader alias, reader fields the writer lacks take their default, writer fields
the reader lacks are decoded (and checked) and dropped, and the promotions int -> long /
float / double, long -> float / double, float -> double, string <-> bytes apply.

>>> w = {"type": "record", "name": "E", "fields": [{"name": "s", "type": "string"}]}
>>> plan = compile_plan(w, w)
>>> plan.decode(b"\\x04hi")
{'s': 'hi'}
>>> try:
...     plan.decode(b"\\x04\\xc0\\xaf")
... except AvroDecodeError as exc:
...     print(exc)
s: invalid UTF-8
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from transforms.schema_compat import PRIMITIVES, PROMOTIONS, full_name

_DOUBLE = struct.Struct("<d")
_FLOAT = struct.Struct("<f")


class AvroDecodeError(ValueError):
    """The bytes are not a record of the writer schema under the strict rule."""


class SchemaPlanError(ValueError):
    """A writer schema cannot be read with the reader schema (or uses an unsupported type)."""


class _Cursor:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0


def _varint(cur: _Cursor, field: str, max_bytes: int, last_max: int, kind: str) -> int:
    buf, pos = cur.buf, cur.pos
    end = len(buf)
    result = 0
    for i in range(max_bytes):
        if pos >= end:
            raise AvroDecodeError(f"{field}: truncated")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            if i == max_bytes - 1 and b > last_max:
                break
            cur.pos = pos
            return (result >> 1) ^ -(result & 1)
    raise AvroDecodeError(f"{field}: invalid {kind} encoding")


def read_long(cur: _Cursor, field: str) -> int:
    return _varint(cur, field, 10, 0x01, "long")


def read_int(cur: _Cursor, field: str) -> int:
    return _varint(cur, field, 5, 0x0F, "int")


def _take(cur: _Cursor, field: str, n: int) -> bytes:
    if cur.pos + n > len(cur.buf):
        raise AvroDecodeError(f"{field}: truncated")
    out = cur.buf[cur.pos:cur.pos + n]
    cur.pos += n
    return out


def read_bytes(cur: _Cursor, field: str) -> bytes:
    n = read_long(cur, field)
    if n < 0:
        raise AvroDecodeError(f"{field}: negative length {n}")
    return _take(cur, field, n)


def read_string(cur: _Cursor, field: str) -> str:
    raw = read_bytes(cur, field)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AvroDecodeError(f"{field}: invalid UTF-8") from exc


def _read_boolean(cur: _Cursor, field: str) -> bool:
    b = _take(cur, field, 1)[0]
    if b > 1:
        raise AvroDecodeError(f"{field}: invalid boolean byte {b}")
    return b == 1


Reader = Callable[[_Cursor, str], Any]


def _index(cur: _Cursor, field: str, size: int, what: str) -> int:
    i = read_int(cur, field)
    if not 0 <= i < size:
        raise AvroDecodeError(f"{field}: {what} index {i} outside [0, {size})")
    return i


class _Names:
    """Named types of one schema by full and short name."""

    def __init__(self) -> None:
        self.types: dict[str, dict[str, Any]] = {}

    def resolve(self, schema: Any, namespace: str | None) -> Any:
        if isinstance(schema, dict) and schema.get("type") in PRIMITIVES:
            schema = schema["type"]  # {"type": "long"}
        if isinstance(schema, str) and schema not in PRIMITIVES:
            for cand in (full_name(schema, namespace), schema):
                if cand in self.types:
                    return self.types[cand]
            raise SchemaPlanError(f"unknown type name {schema!r}")
        if isinstance(schema, dict) and schema.get("type") in ("enum", "fixed"):
            full = full_name(str(schema["name"]), schema.get("namespace", namespace))
            self.types[full] = schema
            self.types.setdefault(str(schema["name"]), schema)
        return schema


def _kind(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, dict):
        return str(schema["type"])
    return str(schema)


def _names_match(w: dict[str, Any], r: dict[str, Any], w_ns: str | None, r_ns: str | None) -> bool:
    wf = full_name(str(w["name"]), w.get("namespace", w_ns))
    rf = full_name(str(r["name"]), r.get("namespace", r_ns))
    aliases = {full_name(a, r.get("namespace", r_ns)) for a in r.get("aliases", [])}
    return wf == rf or wf in aliases or str(w["name"]) == str(r["name"])


def _primitive_reader(kind: str, target: str) -> Reader:
    """Reads a writer ``kind`` and gives it as the reader's ``target`` type."""
    if kind == "null":
        return lambda cur, f: None
    if kind == "boolean":
        return _read_boolean
    if kind in ("int", "long"):
        base = read_int if kind == "int" else read_long
        if target in ("float", "double"):
            return lambda cur, f: float(base(cur, f))
        return base
    if kind == "float":
        return lambda cur, f: _FLOAT.unpack(_take(cur, f, 4))[0]
    if kind == "double":
        return lambda cur, f: _DOUBLE.unpack(_take(cur, f, 8))[0]
    if kind == "string":
        return read_bytes if target == "bytes" else read_string
    if kind == "bytes":
        return read_string if target == "string" else read_bytes
    raise SchemaPlanError(f"unsupported type {kind}")


def _matches(w: Any, r: Any, w_ns: str | None, r_ns: str | None) -> bool:
    wk, rk = _kind(w), _kind(r)
    if wk in ("enum", "fixed"):
        return rk == wk and _names_match(w, r, w_ns, r_ns)
    return wk == rk or rk in PROMOTIONS.get(wk, ())


def _resolve(w: Any, r: Any, wn: _Names, rn: _Names, w_ns: str | None, r_ns: str | None, where: str) -> Reader:
    w = wn.resolve(w, w_ns)
    r = rn.resolve(r, r_ns)
    wk, rk = _kind(w), _kind(r)
    if wk == "union":
        branches: list[Reader | None] = []
        for wb in w:
            try:
                branches.append(_resolve(wb, r, wn, rn, w_ns, r_ns, where))
            except SchemaPlanError:
                branches.append(None)  # legal only while the writer never picks it
        size = len(branches)

        def read_union(cur: _Cursor, f: str) -> Any:
            fn = branches[_index(cur, f, size, "union")]
            if fn is None:
                raise AvroDecodeError(f"{f}: union branch not in the reader schema")
            return fn(cur, f)
        return read_union
    if rk == "union":
        wr = [rn.resolve(b, r_ns) for b in r]
        for b in wr:
            if _matches(w, b, w_ns, r_ns) and _kind(b) == wk:
                return _resolve(w, b, wn, rn, w_ns, r_ns, where)
        for b in wr:
            if _matches(w, b, w_ns, r_ns):
                return _resolve(w, b, wn, rn, w_ns, r_ns, where)
        raise SchemaPlanError(f"{where}: writer type {wk} matches no reader union branch")
    if wk == "enum":
        if rk != "enum" or not _names_match(w, r, w_ns, r_ns):
            raise SchemaPlanError(f"{where}: writer enum cannot be read as {rk}")
        symbols = [s if s in r["symbols"] else r.get("default") for s in w["symbols"]]
        n = len(symbols)

        def read_enum(cur: _Cursor, f: str) -> str:
            sym = symbols[_index(cur, f, n, "enum")]
            if sym is None:
                raise AvroDecodeError(f"{f}: enum symbol not in the reader schema")
            return str(sym)
        return read_enum
    if wk == "fixed":
        if rk != "fixed" or not _names_match(w, r, w_ns, r_ns) or w["size"] != r["size"]:
            raise SchemaPlanError(f"{where}: writer fixed cannot be read as {rk}")
        size_b = int(w["size"])
        return lambda cur, f: _take(cur, f, size_b)
    if wk not in PRIMITIVES:
        raise SchemaPlanError(f"{where}: unsupported writer type {wk}")
    if not (wk == rk or rk in PROMOTIONS.get(wk, ())):
        raise SchemaPlanError(f"{where}: writer type {wk} cannot be read as {rk}")
    return _primitive_reader(wk, rk)


@dataclass(frozen=True)
class RecordPlan:
    """Reads one writer record as the reader: steps in writer order, then reader defaults."""

    steps: tuple[tuple[str, str | None, Reader], ...]  # (writer field, reader field or None, reader)
    defaults: tuple[tuple[str, Any], ...]

    def decode(self, raw: bytes) -> dict[str, Any]:
        """The reader's record, or ``AvroDecodeError`` with the field and the problem."""
        cur = _Cursor(raw)
        out: dict[str, Any] = {}
        for wname, rname, fn in self.steps:
            value = fn(cur, wname)
            if rname is not None:
                out[rname] = value
        if cur.pos != len(raw):
            raise AvroDecodeError("trailing bytes after record")
        for name, default in self.defaults:
            out[name] = default
        return out


def compile_plan(writer: dict[str, Any], reader: dict[str, Any]) -> RecordPlan:
    """The plan reading ``writer`` records as ``reader`` (both top-level record schemas)."""
    if _kind(writer) != "record" or _kind(reader) != "record":
        raise SchemaPlanError("both schemas must be records")
    w_ns, r_ns = writer.get("namespace"), reader.get("namespace")
    wn, rn = _Names(), _Names()
    by_name: dict[str, dict[str, Any]] = {}
    for rf in reader["fields"]:
        for name in (rf["name"], *rf.get("aliases", [])):
            by_name.setdefault(name, rf)
    steps = []
    seen: set[str] = set()
    for wf in writer["fields"]:
        rf = by_name.get(wf["name"])
        if rf is None:  # decoded and checked, then dropped
            steps.append((wf["name"], None, _resolve(wf["type"], wf["type"], wn, wn, w_ns, w_ns, wf["name"])))
            continue
        seen.add(rf["name"])
        steps.append((wf["name"], rf["name"], _resolve(wf["type"], rf["type"], wn, rn, w_ns, r_ns, wf["name"])))
    defaults = []
    for rf in reader["fields"]:
        if rf["name"] in seen:
            continue
        if "default" not in rf:
            raise SchemaPlanError(f"reader field {rf['name']} is missing from the writer and has no default")
        defaults.append((rf["name"], rf["default"]))
    return RecordPlan(tuple(steps), tuple(defaults))
