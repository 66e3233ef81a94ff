"""Avro codec for every event on Swatch's topics, and the deterministic event ids.

Without a schema registry the wire format is Avro single-object encoding (``C3 01`` + the writer
schema's CRC-64-AVRO fingerprint + the body); with one, the Confluent wire format (``00`` + 4-byte
schema id + the body). Decoding accepts both, so a topic can migrate from one to the other.
"""

from streams.codec.ids import (
    attribute_event_id,
    dead_letter_id,
    listing_event_id,
    review_decision_id,
    review_request_id,
)
from streams.codec.schemas import SCHEMA_NAMES, AvroSchema, SchemaSet, schemas_dir
from streams.codec.times import now_millis, to_millis
from streams.codec.wire import Codec, WireFormat

__all__ = [
    "SCHEMA_NAMES",
    "AvroSchema",
    "Codec",
    "SchemaSet",
    "WireFormat",
    "attribute_event_id",
    "dead_letter_id",
    "listing_event_id",
    "now_millis",
    "review_decision_id",
    "review_request_id",
    "schemas_dir",
    "to_millis",
]
