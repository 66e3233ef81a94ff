"""Errors raised by the streaming side, all under :class:`tagger.errors.SwatchError`.

Errors are converted where they enter our code (``raise ... from exc``). Errors about an input
record keep the raw bytes, and the Kafka coordinates when known, so the caller can turn them into
a dead letter without having to hold on to the original message separately.
"""

from __future__ import annotations

from tagger.errors import SwatchError

__all__ = [
    "CodecError",
    "ConfigError",
    "DecodeError",
    "EmbeddedStackError",
    "EncodeError",
    "FatalError",
    "KafkaAdminError",
    "ProduceError",
    "RegistryRefusedError",
    "RegistryUnavailableError",
    "SwatchError",
    "TopicNotFoundError",
    "TransientError",
    "UnknownSchemaError",
]


class ConfigError(SwatchError):
    """The configuration is invalid; the message names the variable and the fix."""


class CodecError(SwatchError):
    """Base class of Avro encoding and decoding errors."""


class TransientError(SwatchError):
    """Infrastructure that is expected to come back (broker, registry, Redis): retry, never dead-letter."""


class FatalError(SwatchError):
    """The worker cannot go on without an operator (credentials, authorisation, a refused schema): stop."""


class EncodeError(CodecError):
    """A record does not match its schema, or cannot be serialised."""


class RegistryRefusedError(EncodeError, FatalError):
    """The schema registry answered and refused a schema (incompatible, invalid, unauthorised)."""


class RegistryUnavailableError(CodecError, TransientError):
    """The schema registry could not be reached or failed (timeout, connection error, HTTP 5xx)."""


class DecodeError(CodecError):
    """Bytes could not be decoded into an event.

    ``raw`` is the undecodable payload, unchanged; ``topic``/``partition``/``offset`` say where it
    was read, when the caller knows. ``reason`` is a short stable code for dead letters and metrics.
    """

    reason = "undecodable"

    def __init__(
        self,
        message: str,
        raw: bytes,
        *,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> None:
        super().__init__(message)
        self.raw = raw
        self.topic = topic
        self.partition = partition
        self.offset = offset

    def at(self, topic: str, partition: int, offset: int) -> DecodeError:
        """Record where the bytes came from (returns self, for ``raise err.at(...)``)."""
        self.topic, self.partition, self.offset = topic, partition, offset
        return self


class UnknownSchemaError(DecodeError):
    """The bytes name a writer schema (fingerprint or registry id) that this codec cannot find."""

    reason = "unknown_schema"


class EmbeddedStackError(SwatchError):
    """An embedded broker or Redis server could not be started or did not answer."""


class KafkaAdminError(SwatchError):
    """A Kafka admin operation (creating or describing topics) failed."""


class TopicNotFoundError(SwatchError):
    """A topic that a command reads or writes does not exist on the cluster."""


class ProduceError(SwatchError):
    """Listing events could not be built from a manifest (no usable image URL, bad options)."""
