"""Encoding and decoding events in the two wire formats.

- Single-object encoding (Avro spec): ``C3 01``, the writer schema's 8-byte little-endian
  CRC-64-AVRO fingerprint, then the Avro binary body. Used when no registry is configured.
- Confluent wire format: ``00``, the 4-byte big-endian schema id, then the body. Schemas are
  registered (or looked up) under the topic-name strategy subject ``<topic>-value``.

Decoding accepts either format whatever is configured, resolves the writer schema against the
current (reader) schema, and turns every failure into :class:`DecodeError` carrying the raw bytes.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import Any, Literal

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.schema_registry.schema_registry_client import ConfigCompatibilityLevel, ServerConfig
from fastavro import schemaless_reader, schemaless_writer
from fastavro.validation import ValidationError, validate

from streams.codec.schemas import AvroSchema, SchemaSet, default_schemas
from streams.config import RegistrySettings
from streams.errors import (
    DecodeError,
    EncodeError,
    RegistryRefusedError,
    RegistryUnavailableError,
    UnknownSchemaError,
)

logger = logging.getLogger(__name__)

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
_SO_HEADER = len(SINGLE_OBJECT_MAGIC) + 8
_CF_HEADER = len(CONFLUENT_MAGIC) + 4

WireFormat = Literal["single-object", "confluent"]
RegistryFactory = Callable[[dict[str, Any]], SchemaRegistryClient]


class Codec:
    """Encodes and decodes Swatch events by event name (``listing_event``, ``dead_letter``, ...)."""

    def __init__(
        self,
        schemas: SchemaSet | None = None,
        registry: SchemaRegistryClient | None = None,
        *,
        auto_register: bool = True,
        compatibility: str | None = None,
    ) -> None:
        self.schemas = schemas or default_schemas()
        self.registry = registry
        self.auto_register = auto_register
        self.compatibility = compatibility
        self._ids: dict[tuple[str, bytes], int] = {}
        self._writers_by_id: dict[int, AvroSchema] = {}

    @classmethod
    def from_settings(cls, settings: RegistrySettings, factory: RegistryFactory | None = None) -> Codec:
        """A codec for the configured wire format (a registry client only when a URL is set).

        ``factory`` builds the registry client from its configuration (default
        ``SchemaRegistryClient.new_client``, which gives an in-memory registry for ``mock://``);
        tests hand in one that fails on cue.
        """
        if settings.url is None:
            return cls()
        conf: dict[str, Any] = {"url": settings.url}
        if settings.basic_auth is not None:
            conf["basic.auth.user.info"] = settings.basic_auth.get_secret_value()
        client = (factory or SchemaRegistryClient.new_client)(conf)
        return cls(registry=client, auto_register=settings.auto_register, compatibility=settings.compatibility)

    def needs_registry(self, name: str, topic: str | None = None, data: bytes | None = None) -> bool:
        """Whether encoding for ``topic`` or decoding ``data`` would call the registry (not cached yet).

        The registry client blocks on HTTP; callers on an event loop run such calls on a thread.
        """
        if self.registry is None:
            return False
        if data is not None:
            raw = bytes(data)
            return raw[:1] == CONFLUENT_MAGIC and len(raw) >= _CF_HEADER and (
                int.from_bytes(raw[1:_CF_HEADER], "big") not in self._writers_by_id
            )
        return topic is not None and (f"{topic}-value", self.schemas.current(name).fingerprint) not in self._ids

    def prepare(self, name: str, topic: str) -> int | None:
        """Register (or look up) ``name``'s current schema under ``<topic>-value`` now; returns the id.

        Raises :class:`RegistryUnavailableError` when the registry cannot be reached (retry later)
        and :class:`RegistryRefusedError` when it refuses the schema.
        """
        if self.registry is None:
            return None
        return self._schema_id(f"{topic}-value", self.schemas.current(name))

    @property
    def wire_format(self) -> WireFormat:
        """The format :meth:`encode` writes."""
        return "confluent" if self.registry is not None else "single-object"

    # -- encoding -----------------------------------------------------------------------------

    def encode(self, name: str, record: dict[str, Any], *, topic: str | None = None) -> bytes:
        """Serialise ``record`` with the current schema of ``name``; ``topic`` names the registry subject."""
        schema = self.schemas.current(name)
        try:
            validate(record, schema.parsed, raise_errors=True)
        except ValidationError as exc:
            raise EncodeError(f"{name} record does not match its schema: {exc}") from exc
        body = io.BytesIO()
        try:
            schemaless_writer(body, schema.parsed, record)
        except (TypeError, ValueError, OverflowError) as exc:
            raise EncodeError(f"cannot encode {name}: {exc}") from exc
        return self._header(schema, topic) + body.getvalue()

    def _header(self, schema: AvroSchema, topic: str | None) -> bytes:
        if self.registry is None:
            return SINGLE_OBJECT_MAGIC + schema.fingerprint
        if not topic:
            raise EncodeError("the Confluent wire format needs the topic to name the subject; pass topic=")
        return CONFLUENT_MAGIC + self._schema_id(f"{topic}-value", schema).to_bytes(4, "big")

    def _schema_id(self, subject: str, schema: AvroSchema) -> int:
        key = (subject, schema.fingerprint)
        cached = self._ids.get(key)
        if cached is not None:
            return cached
        registry = self.registry
        if registry is None:
            raise EncodeError("no schema registry configured")
        registry_schema = Schema(schema.text, "AVRO")
        try:
            if self.auto_register:
                if self.compatibility is not None:
                    level = ConfigCompatibilityLevel(self.compatibility)
                    registry.set_config(subject, ServerConfig(compatibility=level))
                schema_id: int | None = registry.register_schema(subject, registry_schema)
            else:
                schema_id = registry.lookup_schema(subject, registry_schema).schema_id
        except Exception as exc:  # the client raises SchemaRegistryError and transport errors alike
            if _unavailable(exc):
                raise RegistryUnavailableError(
                    f"schema registry unreachable registering {schema.name} under {subject}: {_brief(exc)}"
                ) from exc
            hint = "" if self.auto_register else " (SWATCH_REGISTRY_AUTO_REGISTER=false: register it first)"
            raise RegistryRefusedError(
                f"schema registry refused {schema.name} for subject {subject}: {_brief(exc)}{hint}"
            ) from exc
        if schema_id is None:
            raise EncodeError(f"schema registry returned no id for {schema.name} under {subject}")
        self._ids[key] = int(schema_id)
        return int(schema_id)

    # -- decoding -----------------------------------------------------------------------------

    def decode(self, name: str, data: bytes | None) -> dict[str, Any]:
        """Deserialise bytes in either wire format into a record of the current ``name`` schema."""
        if data is None:
            raise DecodeError(f"expected a {name}, got a null value (tombstone)", b"")
        raw = bytes(data)
        reader = self.schemas.current(name)
        writer, offset = self._writer(raw, reader)
        body = io.BytesIO(raw)
        body.seek(offset)
        try:
            record = schemaless_reader(body, writer.parsed, None if writer is reader else reader.parsed)
        except Exception as exc:  # garbage makes fastavro raise EOFError, ValueError, IndexError, ...
            raise DecodeError(f"cannot decode {name} ({writer.release} writer schema): {_brief(exc)}", raw) from exc
        trailing = len(raw) - body.tell()
        if trailing:
            raise DecodeError(f"{name} decoded with {trailing} bytes left over: corrupt or wrong schema", raw)
        if not isinstance(record, dict):
            raise DecodeError(f"{name} body is not a record", raw)
        return record

    def _writer(self, raw: bytes, reader: AvroSchema) -> tuple[AvroSchema, int]:
        if raw[:2] == SINGLE_OBJECT_MAGIC:
            if len(raw) < _SO_HEADER:
                raise DecodeError(f"truncated single-object header ({len(raw)} bytes)", raw)
            fp = raw[2:_SO_HEADER]
            writer = self.schemas.by_fingerprint(fp)
            if writer is None:
                raise UnknownSchemaError(f"no known schema has fingerprint {fp.hex()}", raw)
            if writer.name != reader.name:
                raise DecodeError(f"expected a {reader.name}, got a {writer.name}", raw)
            return writer, _SO_HEADER
        if raw[:1] == CONFLUENT_MAGIC:
            if len(raw) < _CF_HEADER:
                raise DecodeError(f"truncated Confluent header ({len(raw)} bytes)", raw)
            return self._registry_writer(int.from_bytes(raw[1:_CF_HEADER], "big"), raw, reader), _CF_HEADER
        raise DecodeError(
            f"not a Swatch event: starts with {raw[:2].hex() or 'nothing'}, "
            "neither the single-object marker c301 nor the Confluent magic byte 00",
            raw,
        )

    def _registry_writer(self, schema_id: int, raw: bytes, reader: AvroSchema) -> AvroSchema:
        cached = self._writers_by_id.get(schema_id)
        if cached is None:
            if self.registry is None:
                raise UnknownSchemaError(
                    f"Confluent wire format with schema id {schema_id}, but no registry is configured: "
                    "set SWATCH_REGISTRY_URL",
                    raw,
                )
            try:
                registered = self.registry.get_schema(schema_id)
                text = registered.schema_str if registered is not None else None
            except Exception as exc:  # SchemaRegistryError (unknown id) or a transport error
                if _unavailable(exc):
                    raise RegistryUnavailableError(
                        f"schema registry unreachable looking up schema {schema_id}: {_brief(exc)}"
                    ) from exc
                raise UnknownSchemaError(f"schema registry has no schema {schema_id}: {_brief(exc)}", raw) from exc
            if not text:
                raise UnknownSchemaError(f"schema registry has no schema {schema_id}", raw)
            try:
                cached = AvroSchema.from_text(reader.name, f"registry id {schema_id}", text)
            except Exception as exc:
                raise UnknownSchemaError(f"registry schema {schema_id} is not valid Avro: {exc}", raw) from exc
            self._writers_by_id[schema_id] = cached
        if cached.full_name != reader.full_name:
            raise DecodeError(f"expected a {reader.name}, registry schema {schema_id} is {cached.full_name}", raw)
        if cached.fingerprint == reader.fingerprint:
            return reader
        return cached


def _unavailable(exc: BaseException) -> bool:
    """Whether a registry client error means "not reachable now" rather than "refused"."""
    if isinstance(exc, SchemaRegistryError):
        # -1 is the client's code for "no JSON answer" (a proxy's error page); 5xx, 408 and 429 are transient.
        return exc.http_status_code >= 500 or exc.http_status_code in (408, 429) or exc.http_status_code < 0
    return isinstance(exc, OSError | TimeoutError | ConnectionError) or type(exc).__module__.startswith("httpx")


def _brief(exc: BaseException, limit: int = 300) -> str:
    """An exception as short text: fastavro's resolution errors embed both schemas whole."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
