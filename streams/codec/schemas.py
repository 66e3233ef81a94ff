"""Loading the ``.avsc`` files: the current schema of each event and every released version.

``schemas/<name>.avsc`` is the schema producers write today. ``schemas/released/v<N>/`` holds the
schemas as they were released; a decoder finds any of them by fingerprint, and a test checks that
each current schema reads what every released one wrote and the other way round.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from streams.codec.canonical import canonical_form
from streams.errors import CodecError

SCHEMA_NAMES = ("listing_event", "attribute_event", "review_request", "review_decision", "dead_letter")
CURRENT = "current"


def schemas_dir() -> Path:
    """Where the ``.avsc`` files are: inside an installed wheel, or the repository's ``schemas/``."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "schemas", here.parent / "schemas"):
        if (candidate / "listing_event.avsc").is_file():
            return candidate
    raise CodecError(f"Avro schemas not found next to {here}; reinstall swatch (`make install`)")


@dataclass(frozen=True)
class AvroSchema:
    """One parsed schema with its Parsing Canonical Form and 8-byte CRC-64-AVRO fingerprint."""

    name: str
    release: str
    text: str
    parsed: Any = field(repr=False)
    canonical: str = field(repr=False)
    fingerprint: bytes
    apache_fingerprint: bytes = field(repr=False)

    @property
    def version(self) -> int:
        """The ``schema_version`` this schema's records carry: the default of that field in the ``.avsc``."""
        for f in self.parsed["fields"]:
            if f["name"] == "schema_version":
                return int(f["default"])
        raise CodecError(f"schema {self.name} ({self.release}) has no schema_version field")

    @property
    def full_name(self) -> str:
        """The record's full name, e.g. ``io.swatch.events.ListingEvent``."""
        return str(self.parsed["name"])

    @classmethod
    def from_text(cls, name: str, release: str, text: str) -> AvroSchema:
        """Parse schema JSON; each schema is self-contained, so it gets its own named-type scope."""
        try:
            parsed = parse_schema(json.loads(text), named_schemas={})
        except Exception as exc:  # fastavro raises several unrelated types for a bad schema
            raise CodecError(f"schema {name} ({release}) is not valid Avro: {exc}") from exc
        canonical = to_parsing_canonical_form(parsed)
        apache = canonical_form(json.loads(text), "apache")
        return cls(name, release, text, parsed, canonical, _crc64(canonical), _crc64(apache))


def _crc64(canonical: str) -> bytes:
    # fastavro returns the fingerprint as the hex of its little-endian bytes, which is exactly the
    # order the single-object header uses.
    return bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


def _release_key(path: Path) -> int:
    return int(path.name.removeprefix("v")) if path.name.removeprefix("v").isdigit() else -1


class SchemaSet:
    """Every event's current schema and released versions, indexed by fingerprint."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or schemas_dir()
        self._current: dict[str, AvroSchema] = {}
        self._released: dict[str, list[AvroSchema]] = {name: [] for name in SCHEMA_NAMES}
        self._by_fingerprint: dict[bytes, AvroSchema] = {}
        for name in SCHEMA_NAMES:
            self._current[name] = self._load(self.directory / f"{name}.avsc", name, CURRENT)
        releases = sorted((p for p in (self.directory / "released").glob("v*") if p.is_dir()), key=_release_key)
        for release_dir in releases:
            for name in SCHEMA_NAMES:
                path = release_dir / f"{name}.avsc"
                if path.is_file():
                    self._released[name].append(self._load(path, name, release_dir.name))

    def _load(self, path: Path, name: str, release: str) -> AvroSchema:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CodecError(f"cannot read schema {path}: {exc}") from exc
        schema = AvroSchema.from_text(name, release, text)
        # Both the specification's fingerprint and the one Apache's Python avro package computes
        # (it differs for logical types) name this schema, so either producer's header decodes.
        for fp in (schema.fingerprint, schema.apache_fingerprint):
            known = self._by_fingerprint.get(fp)
            if known is not None and known.name != name:
                raise CodecError(f"{path} has the same fingerprint as schema {known.name}")
            # The current schema wins over an identical released one, so decoding skips resolution.
            self._by_fingerprint.setdefault(fp, schema)
        return schema

    def current(self, name: str) -> AvroSchema:
        """The schema producers write today for event ``name``."""
        try:
            return self._current[name]
        except KeyError:
            raise CodecError(f"unknown event type {name!r}; expected one of {', '.join(SCHEMA_NAMES)}") from None

    def released(self, name: str) -> list[AvroSchema]:
        """Released versions of ``name``, oldest first."""
        self.current(name)
        return list(self._released[name])

    def by_fingerprint(self, fp: bytes) -> AvroSchema | None:
        """The schema (current or released) whose CRC-64-AVRO fingerprint is ``fp``.

        Both the specification's fingerprint and Apache's Python avro variant are recognised.
        """
        return self._by_fingerprint.get(fp)


@cache
def default_schemas() -> SchemaSet:
    """The schemas shipped with Swatch, loaded once per process."""
    return SchemaSet()
