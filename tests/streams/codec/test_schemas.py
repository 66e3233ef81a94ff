"""Schema rules: documented fields, and compatibility with every released version both ways."""

from __future__ import annotations

import copy
import io
import json
from typing import Any

import pytest
from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import parse_schema

from streams.codec import SCHEMA_NAMES, AvroSchema, SchemaSet
from streams.codec.schemas import default_schemas
from tests.streams.codec.records import REALISTIC, random_records

SCHEMAS = default_schemas()


def _records_in(schema: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            if node.get("type") == "record":
                found.append(node)
                for f in node["fields"]:
                    walk(f["type"])
            else:
                walk(node.get("items"))
                walk(node.get("values"))
                walk(node.get("type") if isinstance(node.get("type"), dict | list) else None)

    walk(schema)
    return found


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_every_record_and_field_is_documented(name: str) -> None:
    raw = json.loads(SCHEMAS.current(name).text)
    for record in _records_in(raw):
        assert record.get("doc"), f"{record['name']} has no doc"
        for f in record["fields"]:
            assert f.get("doc"), f"{record['name']}.{f['name']} has no doc"
            assert f["name"] == f["name"].lower(), f"{f['name']} is not snake_case"


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_every_event_has_version_id_and_time(name: str) -> None:
    fields = {f["name"]: f for f in json.loads(SCHEMAS.current(name).text)["fields"]}
    assert "schema_version" in fields
    assert fields["event_id"]["type"] == "string"
    times = [
        f for f in fields.values() if isinstance(f["type"], dict) and f["type"].get("logicalType") == "timestamp-millis"
    ]
    assert times, f"{name} carries no UTC-millisecond time"


def _write(schema: AvroSchema, record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    schemaless_writer(out, schema.parsed, record)
    return out.getvalue()


def _read(writer: AvroSchema, reader: AvroSchema, data: bytes) -> dict[str, Any]:
    result = schemaless_reader(io.BytesIO(data), writer.parsed, reader.parsed)
    assert isinstance(result, dict)
    return result


def _pairs() -> list[tuple[str, AvroSchema]]:
    return [(name, released) for name in SCHEMA_NAMES for released in SCHEMAS.released(name)]


def test_the_first_release_is_kept() -> None:
    for name in SCHEMA_NAMES:
        assert [s.release for s in SCHEMAS.released(name)][:1] == ["v1"], f"{name} lost its v1 release"


@pytest.mark.parametrize(("name", "released"), _pairs(), ids=lambda v: v if isinstance(v, str) else v.release)
def test_current_reads_released_and_released_reads_current(name: str, released: AvroSchema) -> None:
    current = SCHEMAS.current(name)
    # Backward: today's reader decodes what the release wrote.
    for record in [*random_records(name, 30, seed=2)]:
        _read(released, current, _write(released, record))
    # Forward: the released reader decodes what today's writer writes.
    for record in [REALISTIC[name], *random_records(name, 30, seed=3)]:
        _read(current, released, _write(current, record))


def test_the_check_catches_an_incompatible_change() -> None:
    """A new field without a default breaks old data: the same check must fail on it."""
    current = SCHEMAS.current("listing_event")
    broken_json = copy.deepcopy(json.loads(current.text))
    broken_json["fields"].append({"name": "brand", "type": "string", "doc": "no default: incompatible"})
    broken = AvroSchema.from_text("listing_event", "broken", json.dumps(broken_json))
    data = _write(current, REALISTIC["listing_event"])
    with pytest.raises(Exception, match="brand"):
        _read(current, broken, data)


def test_schema_set_indexes_released_versions_by_fingerprint(tmp_path: Any) -> None:
    current = SCHEMAS.current("review_decision")
    assert SCHEMAS.by_fingerprint(current.fingerprint) is current
    # A released schema that differs from today's is found by its own fingerprint.
    for name in SCHEMA_NAMES:
        (tmp_path / f"{name}.avsc").write_text(SCHEMAS.current(name).text)
    old = json.loads(current.text)
    old["fields"] = [f for f in old["fields"] if f["name"] != "comment"]
    (tmp_path / "released" / "v1").mkdir(parents=True)
    (tmp_path / "released" / "v1" / "review_decision.avsc").write_text(json.dumps(old))
    schemas = SchemaSet(tmp_path)
    v1 = schemas.released("review_decision")[0]
    assert v1.fingerprint != current.fingerprint
    assert schemas.by_fingerprint(v1.fingerprint) is v1
    parse_schema(json.loads(v1.text), named_schemas={})
