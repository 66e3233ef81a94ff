"""Avro Parsing Canonical Form, as the specification defines it and as Apache's Python package writes it.

The single-object header carries the CRC-64-AVRO fingerprint of the writer schema's canonical form.
The specification (and Java, and fastavro) write a primitive with a logical type as the bare
primitive name (``"long"``); Apache's Python ``avro`` package (1.12) keeps it as an object
(``{"type":"long"}``), so a listing producer that uses it stamps a different fingerprint on the
same schema. Swatch writes the specification's form and recognises both (see
:class:`streams.codec.schemas.SchemaSet`).
"""

from __future__ import annotations

import json
from typing import Any, Literal

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_KEPT = ("name", "type", "fields", "symbols", "items", "values", "size")

Dialect = Literal["spec", "apache"]


def canonical_form(schema: Any, dialect: Dialect = "spec") -> str:
    """The Parsing Canonical Form of a schema given as parsed JSON (names resolved to full names)."""
    return json.dumps(_canonical(schema, None, dialect, set()), separators=(",", ":"))


def _full_name(node: dict[str, Any], namespace: str | None) -> tuple[str, str | None]:
    name = str(node["name"])
    if "." in name:
        return name, name.rpartition(".")[0]
    space = node.get("namespace", namespace)
    return (f"{space}.{name}" if space else name), space


def _canonical(node: Any, namespace: str | None, dialect: Dialect, seen: set[str]) -> Any:
    if isinstance(node, str):
        if node in PRIMITIVES or "." in node or not namespace:
            return node
        return f"{namespace}.{node}"
    if isinstance(node, list):
        return [_canonical(branch, namespace, dialect, seen) for branch in node]
    kind = node["type"]
    if kind in PRIMITIVES:
        return {"type": kind} if "logicalType" in node and dialect == "apache" else kind
    if isinstance(kind, dict | list):
        return _canonical(kind, namespace, dialect, seen)
    return _complex(node, namespace, dialect, seen)


def _complex(node: dict[str, Any], namespace: str | None, dialect: Dialect, seen: set[str]) -> Any:
    """A record, enum, fixed, array or map: only the canonical attributes, in the canonical order."""
    kind = node["type"]
    out: dict[str, Any] = {}
    if kind in ("record", "error", "enum", "fixed"):
        full, namespace = _full_name(node, namespace)
        if full in seen:
            return full
        seen.add(full)
        out["name"] = full
    out["type"] = "record" if kind == "error" else kind
    for key in _KEPT[2:]:
        if key not in node:
            continue
        value = node[key]
        if key == "fields":
            out[key] = [{"name": f["name"], "type": _canonical(f["type"], namespace, dialect, seen)} for f in value]
        elif key in ("items", "values"):
            out[key] = _canonical(value, namespace, dialect, seen)
        else:
            out[key] = value
    return out
