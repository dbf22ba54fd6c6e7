"""Flink SQL column lists derived from the Avro schema files, so a sink table written by
Flink's ``avro`` format decodes with ``schemas/*.avsc`` (one source of truth).

>>> columns_ddl("dead_letter").split(", ")[0]
'`reason` STRING NOT NULL'
"""

from __future__ import annotations

import json
from typing import Any

from transforms.codecs import schema_path

_PRIMITIVE = {"string": "STRING", "long": "BIGINT", "int": "INT", "double": "DOUBLE", "float": "FLOAT",
              "boolean": "BOOLEAN", "bytes": "BYTES"}


def flink_type(avro_type: Any) -> str:
    """Flink SQL type for an Avro type (non-null; maps with string keys)."""
    if isinstance(avro_type, str) and avro_type in _PRIMITIVE:
        return f"{_PRIMITIVE[avro_type]} NOT NULL"
    if isinstance(avro_type, dict) and avro_type.get("type") == "map":
        return f"MAP<STRING NOT NULL, {flink_type(avro_type['values'])}> NOT NULL"
    raise ValueError(f"no Flink SQL type for Avro type {avro_type!r}")


def field_names(name: str, version: int = 1) -> list[str]:
    return [f["name"] for f in json.loads(schema_path(name, version).read_text())["fields"]]


def columns_ddl(name: str, version: int = 1) -> str:
    fields = json.loads(schema_path(name, version).read_text())["fields"]
    return ", ".join(f"`{f['name']}` {flink_type(f['type'])}" for f in fields)
