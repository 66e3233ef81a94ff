"""Dead letters that always fit, and the size check every output passes before it is produced.

The limit follows the producer's ``message.max.bytes`` (librdkafka's default, 1,000,000 bytes,
unless ``SWATCH_KAFKA_EXTRA`` sets it), less an envelope for the record and batch headers. An
output over it is the input's fault (a huge title, thousands of image URLs): the listing becomes a
dead letter ``output_too_large``. A dead letter of an input that itself nearly filled the limit
carries only the first bytes of the original value, with ``truncated`` set and the original size.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from streams.errors import SwatchError
from streams.events import dead_letter
from streams.worker.records import Consumed, Output

ENVELOPE_BYTES = 512  # record and batch overhead, with room to spare
Encode = Callable[[str, dict[str, Any], str], Awaitable[bytes]]


class OutputTooLargeError(SwatchError):
    """An output is larger than the broker accepts, even with its echoed text clipped."""


class DeadLetters:
    """Builds the dead letters of one worker and checks every output against the size limit."""

    def __init__(self, topic: str, worker_id: str, max_message_bytes: int) -> None:
        self.topic = topic
        self.worker_id = worker_id
        self.max_message_bytes = max_message_bytes
        self.budget = max(1024, max_message_bytes - ENVELOPE_BYTES)

    def checked(self, output: Output) -> Output:
        """``output`` itself, or :class:`OutputTooLargeError` when it cannot be produced."""
        if output.size > self.budget:
            raise OutputTooLargeError(
                f"the {output.kind} output would be {output.size} bytes; the limit is {self.budget} "
                f"(message.max.bytes {self.max_message_bytes} less a {ENVELOPE_BYTES}-byte envelope)"
            )
        return output

    async def encode(
        self,
        record: Consumed,
        reason: str,
        error_class: str,
        message: str,
        encode: Encode,
        *,
        budget: int | None = None,
    ) -> bytes:
        """The encoded dead letter of ``record``, its original value cut so that the whole fits ``budget``."""
        budget = self.budget if budget is None else budget
        original = record.original()
        key_bytes = len(record.key or b"")

        async def build(limit: int | None) -> bytes:
            letter = dead_letter(original, reason, error_class, message, worker_id=self.worker_id, value_limit=limit)
            if limit is not None and key_bytes > budget // 4:
                letter["original_key"] = (record.key or b"")[:1024]  # the record's key still routes it
                letter["truncated"] = True
            return await encode("dead_letter", letter, self.topic)

        value = await build(None)
        if len(value) + key_bytes <= budget:
            return value
        bare = await build(0)
        room = budget - len(bare) - key_bytes - 16  # 16: the value's length prefix grows with it
        return await build(max(0, room))
