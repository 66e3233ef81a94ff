"""Round trips in both wire formats, interop with Apache's avro package, and hostile bytes."""

from __future__ import annotations

import contextlib
import io
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from streams.codec import SCHEMA_NAMES, Codec, schemas_dir
from streams.codec.wire import SINGLE_OBJECT_MAGIC
from streams.errors import DecodeError, EncodeError, SwatchError, UnknownSchemaError
from tests.streams.codec.records import REALISTIC, plain, random_records

AVSC_FILES = sorted(schemas_dir().glob("*.avsc"))
PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def test_every_event_has_a_schema_file() -> None:
    assert sorted(p.stem for p in AVSC_FILES) == sorted(SCHEMA_NAMES)


def _registry_codec() -> Codec:
    # confluent-kafka's own in-memory registry (mock:// URLs); no registry server runs here.
    return Codec(registry=SchemaRegistryClient.new_client({"url": "mock://swatch-tests"}))


def _records(name: str) -> list[dict[str, Any]]:
    return [REALISTIC[name], *random_records(name, 25, seed=1)]


@pytest.mark.parametrize("wire", ["single-object", "confluent"])
@pytest.mark.parametrize("avsc", AVSC_FILES, ids=lambda p: p.stem)
def test_round_trip(avsc: Path, wire: str) -> None:
    codec = Codec() if wire == "single-object" else _registry_codec()
    assert codec.wire_format == wire
    for record in _records(avsc.stem):
        data = codec.encode(avsc.stem, record, topic="listings")
        assert data[:2] == SINGLE_OBJECT_MAGIC if wire == "single-object" else data[:1] == b"\x00"
        assert plain(codec.decode(avsc.stem, data)) == plain(record)


def test_decoder_reads_both_formats_whatever_is_configured() -> None:
    record = REALISTIC["listing_event"]
    registry = _registry_codec()
    confluent = registry.encode("listing_event", record, topic="listings")
    single = Codec().encode("listing_event", record)
    assert plain(registry.decode("listing_event", single)) == plain(record)
    with pytest.raises(UnknownSchemaError, match="SWATCH_REGISTRY_URL"):
        Codec().decode("listing_event", confluent)


# -- interop: the single-object form read by an independent implementation ----------------------

_CRC_EMPTY = 0xC15D213AA4D7A795


def _crc64_avro(data: bytes) -> bytes:
    """CRC-64-AVRO exactly as the Avro specification's reference code computes it."""
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_CRC_EMPTY & -(fp & 1))
        table.append(fp)
    fp = _CRC_EMPTY
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp.to_bytes(8, "little")


def _canonical(schema: Any, namespace: str | None, seen: set[str]) -> str:  # noqa: PLR0911 - one return per rule
    """Parsing Canonical Form, written from the specification's rules (not from fastavro)."""
    if isinstance(schema, list):
        return "[" + ",".join(_canonical(s, namespace, seen) for s in schema) + "]"
    if isinstance(schema, str):
        if schema in PRIMITIVES:
            return json.dumps(schema)
        return json.dumps(schema if "." in schema or not namespace else f"{namespace}.{schema}")
    kind = schema["type"]
    if kind in PRIMITIVES:  # [PRIMITIVES] + [STRIP]: logicalType and other attributes go
        return json.dumps(kind)
    if kind in ("array", "map"):
        key = "items" if kind == "array" else "values"
        return f'{{"type":"{kind}","{key}":{_canonical(schema[key], namespace, seen)}}}'
    name = schema["name"]
    ns = schema.get("namespace", namespace)
    full = name if "." in name or not ns else f"{ns}.{name}"
    if full in seen:
        return json.dumps(full)
    seen.add(full)
    inner_ns = full.rsplit(".", 1)[0] if "." in full else None
    parts = [f'"name":{json.dumps(full)}', f'"type":"{kind}"']
    if kind == "record":
        fields = ",".join(
            f'{{"name":{json.dumps(f["name"])},"type":{_canonical(f["type"], inner_ns, seen)}}}'
            for f in schema["fields"]
        )
        parts.append(f'"fields":[{fields}]')
    elif kind == "enum":
        parts.append('"symbols":' + json.dumps(schema["symbols"], separators=(",", ":")))
    elif kind == "fixed":
        parts.append(f'"size":{schema["size"]}')
    return "{" + ",".join(parts) + "}"


@pytest.mark.parametrize("avsc", AVSC_FILES, ids=lambda p: p.stem)
def test_single_object_interop_with_apache_avro(avsc: Path) -> None:
    text = avsc.read_text()
    expected_fp = _crc64_avro(_canonical(json.loads(text), None, set()).encode())
    apache_schema = avro.schema.parse(text)
    reader = avro.io.DatumReader(apache_schema)
    codec = Codec()
    for record in _records(avsc.stem):
        data = codec.encode(avsc.stem, record)
        assert data[:2] == b"\xc3\x01"
        assert data[2:10] == expected_fp, "header fingerprint differs from the spec's CRC-64-AVRO"
        body = io.BytesIO(data[10:])
        decoded = reader.read(avro.io.BinaryDecoder(body))
        assert body.tell() == len(data) - 10
        assert plain(decoded) == plain(record)


@pytest.mark.parametrize("avsc", AVSC_FILES, ids=lambda p: p.stem)
def test_events_from_an_apache_avro_producer_decode(avsc: Path) -> None:
    # A listing producer built on Apache's Python avro stamps its own fingerprint (its canonical form
    # keeps {"type": "long"} for logical types); the codec knows both fingerprints of every schema.
    text = avsc.read_text()
    apache_schema = avro.schema.parse(text)
    writer = avro.io.DatumWriter(apache_schema)
    codec = Codec()
    for record in _records(avsc.stem):
        body = io.BytesIO()
        writer.write(_apache_datum(record), avro.io.BinaryEncoder(body))
        data = b"\xc3\x01" + apache_schema.fingerprint("CRC-64-AVRO") + body.getvalue()
        assert plain(codec.decode(avsc.stem, data)) == plain(record)


def _apache_datum(value: Any) -> Any:
    """Apache's writer wants aware datetimes for timestamp-millis; our records carry epoch milliseconds."""
    if isinstance(value, dict):
        return {k: _as_datetime(k, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_apache_datum(v) for v in value]
    return value


def _as_datetime(key: str, value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and (key.endswith("_time") or key in _TIME_FIELDS):
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=value)
    return _apache_datum(value)


_TIME_FIELDS = {"original_timestamp", "decided_at"}


# -- hostile bytes --------------------------------------------------------------------------------


def _expect_decode_error(codec: Codec, name: str, data: bytes) -> DecodeError:
    with pytest.raises(DecodeError) as caught:
        codec.decode(name, data)
    assert caught.value.raw == data, "the error must keep the raw bytes for the dead letter"
    assert isinstance(caught.value, SwatchError)
    return caught.value


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00", b"\xc3", b"\xc3\x01", b"\xc3\x01\x00\x01", b'{"listing_id": "L-1"}', b"\xff" * 64],
    ids=["empty", "magic-only", "half-marker", "marker-only", "short-fingerprint", "json", "ff"],
)
def test_garbage_raises_typed_error(data: bytes) -> None:
    _expect_decode_error(Codec(), "listing_event", data)


def test_null_value_raises_typed_error() -> None:
    with pytest.raises(DecodeError, match="tombstone"):
        Codec().decode("listing_event", None)


def test_wrong_fingerprint_is_unknown_schema() -> None:
    good = Codec().encode("listing_event", REALISTIC["listing_event"])
    error = _expect_decode_error(Codec(), "listing_event", good[:2] + bytes(8) + good[10:])
    assert isinstance(error, UnknownSchemaError)
    assert error.reason == "unknown_schema"


def test_other_event_type_is_refused() -> None:
    data = Codec().encode("dead_letter", REALISTIC["dead_letter"])
    assert "expected a listing_event" in str(_expect_decode_error(Codec(), "listing_event", data))


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_every_truncation_raises_typed_error(name: str) -> None:
    codec = Codec()
    data = codec.encode(name, REALISTIC[name])
    for cut in range(len(data)):
        _expect_decode_error(codec, name, data[:cut])
    _expect_decode_error(codec, name, data + b"\x00")  # trailing bytes are corruption too


def test_unknown_registry_id_raises_typed_error() -> None:
    error = _expect_decode_error(_registry_codec(), "listing_event", b"\x00\x00\x00\x30\x39" + b"\x02")
    assert isinstance(error, UnknownSchemaError)


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_random_corruption_never_escapes_as_another_exception(name: str) -> None:
    rng = random.Random(f"fuzz:{name}")
    codec = Codec()
    good = codec.encode(name, REALISTIC[name])
    for _ in range(400):
        data = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            codec.decode(name, bytes(data))  # some flips still decode to a valid record
        except DecodeError as exc:
            assert exc.raw == bytes(data)
    for _ in range(200):
        noise = bytes(rng.randrange(256) for _ in range(rng.randint(0, 80)))
        with contextlib.suppress(DecodeError):
            codec.decode(name, noise)


def test_decode_error_records_where_it_came_from() -> None:
    error = _expect_decode_error(Codec(), "listing_event", b"nope")
    assert error.at("listings", 2, 99) is error
    assert (error.topic, error.partition, error.offset) == ("listings", 2, 99)


def test_encode_rejects_invalid_records() -> None:
    bad = {**REALISTIC["listing_event"], "listing_version": "seven"}
    with pytest.raises(EncodeError, match="listing_version"):
        Codec().encode("listing_event", bad)
    with pytest.raises(EncodeError, match="topic"):
        _registry_codec().encode("listing_event", REALISTIC["listing_event"])
    with pytest.raises(SwatchError, match="unknown event type"):
        Codec().encode("listing", REALISTIC["listing_event"])
