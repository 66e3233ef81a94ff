"""One listing, start to end: decode, validate, tag its images, wait its turn, gate, decide, build outputs.

The pipeline never produces anything itself: it returns an :class:`Outcome` (the encoded outputs
and a result label) or raises one of the failures its caller owns:

- :class:`streams.errors.TransientError` (the registry is unreachable): retried, never dead-lettered;
- :class:`streams.errors.FatalError` (the registry refused a schema): the worker stops;
- :class:`streams.worker.tagging.ModelError`: retried, then dead-lettered as ``model_failed``;
- anything else is a bug: dead-lettered as ``internal_error``.

Input-caused failures end here as dead letters with a reason: ``undecodable``, ``unknown_schema``,
``invalid_event``, ``output_too_large`` (an output over the broker's limit even after its echoed text
was clipped), ``unencodable_output``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from typing import Any

from streams.codec import Codec, now_millis
from streams.combine import Decision, ImageOutcome, decide
from streams.config import TopicSettings
from streams.errors import DecodeError, EncodeError, RegistryRefusedError, RegistryUnavailableError, SwatchError
from streams.events import ListingContext, attribute_event, error_text, qualified_name, review_request
from streams.metrics import WorkerMetrics
from streams.worker.gate import VersionGate
from streams.worker.letters import DeadLetters, OutputTooLargeError
from streams.worker.records import Consumed, Outcome, Output
from streams.worker.sequencer import Sequencer, Ticket
from streams.worker.tagging import ImageTagger
from tagger.taxonomy import Taxonomy

logger = logging.getLogger(__name__)

MAX_LISTING_ID_CHARS = 256  # ids become Kafka keys and Redis keys: keep them short
MAX_MERCHANT_ID_CHARS = 256


class InvalidEventError(SwatchError):
    """A decoded listing event breaks a rule the schema cannot express."""


class Pipeline:
    """Processes one consumed record into its outcome; see the module docstring."""

    def __init__(
        self,
        *,
        codec: Codec,
        topics: TopicSettings,
        model_id: str,
        taxonomy: Taxonomy,
        thresholds: Mapping[str, float],
        tagger: ImageTagger,
        gate: VersionGate,
        letters: DeadLetters,
        metrics: WorkerMetrics,
        registry_pool: Executor | None = None,
    ) -> None:
        self.codec = codec
        self.topics = topics
        self.model_id = model_id
        self.taxonomy = taxonomy
        self.thresholds = dict(thresholds)
        self.tagger = tagger
        self.gate = gate
        self.letters = letters
        self.metrics = metrics
        self.sequencer = Sequencer()
        self._registry_pool = registry_pool

    async def process(self, record: Consumed, tickets: list[Ticket]) -> Outcome:
        """The outcome of one record; a ticket taken in its listing's queue is appended to ``tickets``.

        The caller releases the ticket when the record is finished or dropped, whatever happens.
        """
        try:
            listing = await self._decode(record)
            _validate(listing)
        except DecodeError as exc:
            return await self.dead_letter(record, exc.reason, exc)
        except InvalidEventError as exc:
            return await self.dead_letter(record, "invalid_event", exc)
        if tickets:  # a retry keeps its place in the listing's queue
            ticket = tickets[0]
        else:
            ticket = self.sequencer.enter(listing["listing_id"])
            tickets.append(ticket)
        images: list[ImageOutcome] = []
        fresh = False
        if await self.gate.is_stale(listing["listing_id"], int(listing["listing_version"])):
            return Outcome("stale", [], listing["listing_id"])  # a newer version is out: skip the work
        if listing["operation"] == "UPSERT":
            owner = f"{listing['listing_id']}@{listing['listing_version']}"
            images, fresh = await self.tagger.tag(listing["image_urls"], owner)
        await ticket.wait_turn()  # publish a listing's versions in the order they were consumed
        return await self._publish(record, listing, images, fresh)

    async def _decode(self, record: Consumed) -> dict[str, Any]:
        if self.codec.needs_registry("listing_event", data=record.value) and self._registry_pool is not None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._registry_pool, self.codec.decode, "listing_event", record.value)
        return self.codec.decode("listing_event", record.value)

    async def _publish(
        self, record: Consumed, listing: dict[str, Any], images: list[ImageOutcome], fresh: bool
    ) -> Outcome:
        listing_id, version = listing["listing_id"], int(listing["listing_version"])
        if self.gate.claimed_newer(listing_id, version):  # an earlier record of it moved on meanwhile
            return Outcome("stale", [], listing_id)
        key = listing_id.encode()
        gate = self.gate

        def published() -> None:
            gate.published(listing_id, version)

        if listing["operation"] == "DELETE":
            self.gate.claim(listing_id, version)
            return Outcome("deleted", [Output("attributes", self.topics.attributes, key, None, published)], listing_id)
        decision = decide(
            self.taxonomy,
            listing["category_path"],
            images,
            self.thresholds,
            listing.get("declared_attributes") or {},
            fresh=fresh,
        )
        context = ListingContext.of(listing, record.received_ms)
        try:
            outputs = await self._outputs(context, decision, images, published)
        except OutputTooLargeError as exc:
            return await self.dead_letter(record, "output_too_large", exc)
        except (RegistryUnavailableError, RegistryRefusedError):
            raise  # infrastructure or configuration, not the input: the caller retries or stops
        except EncodeError as exc:
            return await self.dead_letter(record, "unencodable_output", exc)
        self.gate.claim(listing_id, version)
        usable = any(image.outcome in ("TAGGED", "CACHE_HIT") for image in images)
        result = "no_group" if decision.group is None else "review" if decision.review_pending else "tagged"
        return Outcome(result if usable or decision.group is None else "no_usable_image", outputs, listing_id)

    async def _outputs(
        self, context: ListingContext, decision: Decision, images: list[ImageOutcome], published: Callable[[], None]
    ) -> list[Output]:
        """The review request (when one is due) first, then the attribute event that may promise it."""
        key = context.listing_id.encode()
        now = now_millis()
        metrics = self.metrics

        def acked() -> None:
            published()
            acked_at = time.time()
            metrics.end_to_end.observe(max(0.0, acked_at - context.source_event_time / 1000))
            metrics.processing.observe(max(0.0, acked_at - context.received_ms / 1000))

        outputs = []
        if decision.review_pending:
            request = review_request(context, self.model_id, decision, images, now=now)
            value = await self.encode("review_request", request, self.topics.review)
            outputs.append(self.letters.checked(Output("review", self.topics.review, key, value)))
        pending = decision.review_pending
        event = attribute_event(context, self.model_id, decision, images, review_pending=pending, now=now)
        value = await self.encode("attribute_event", event, self.topics.attributes)
        outputs.append(self.letters.checked(Output("attributes", self.topics.attributes, key, value, acked)))
        return outputs

    async def encode(self, name: str, record: dict[str, Any], topic: str) -> bytes:
        """Encode for ``topic``; a first registry call for the subject runs off the event loop."""
        if self.codec.needs_registry(name, topic) and self._registry_pool is not None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._registry_pool, lambda: self.codec.encode(name, record, topic=topic))
        return self.codec.encode(name, record, topic=topic)

    async def dead_letter(
        self, record: Consumed, reason: str, exc: BaseException, *, trace: bool = False, budget: int | None = None
    ) -> Outcome:
        """The outcome that sends ``record`` to the dead-letter topic with ``reason`` (cut to ``budget`` bytes)."""
        logger.warning("dead letter (%s): %s", reason, exc, extra=record.context)
        value = await self.letters.encode(
            record, reason, qualified_name(exc), error_text(exc, with_traceback=trace), self.encode, budget=budget
        )
        return Outcome("dead_letter", [Output("dlq", self.topics.dlq, record.key, value)], reason=reason)


def _validate(listing: dict[str, Any]) -> None:
    listing_id = listing["listing_id"]
    if not listing_id.strip():
        raise InvalidEventError("listing_id is empty")
    if len(listing_id) > MAX_LISTING_ID_CHARS:
        raise InvalidEventError(f"listing_id is {len(listing_id)} characters long; the limit is {MAX_LISTING_ID_CHARS}")
    if len(listing["merchant_id"]) > MAX_MERCHANT_ID_CHARS:
        raise InvalidEventError(
            f"merchant_id is {len(listing['merchant_id'])} characters long; the limit is {MAX_MERCHANT_ID_CHARS}"
        )
    if listing["operation"] not in ("UPSERT", "DELETE"):
        raise InvalidEventError(f"operation {listing['operation']} is neither UPSERT nor DELETE")
    if listing["listing_version"] < 0:
        raise InvalidEventError(f"listing_version {listing['listing_version']} is negative")
