"""The job runner's failure policy: every record ends acknowledged, dead-lettered, or stops the worker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from streams.errors import FatalError, RegistryUnavailableError
from streams.events import listing_event
from streams.tracker import OffsetTracker
from streams.worker.health import HealthState
from streams.worker.jobs import SMALL_LETTER_BYTES, ErrorBudget, JobRunner
from streams.worker.records import Consumed, Outcome
from streams.worker.sequencer import Ticket
from tests.streams.worker.fakes import FakeDelivery, Parts, consumed, make_pipeline


def _value(parts: Parts, listing_id: str = "L1") -> bytes:
    record = listing_event(
        listing_id, 1, merchant_id="m", category_path=["women", "clothing", "dresses"], image_urls=["https://cdn/a"]
    )
    return parts.codec.encode("listing_event", record)


class Harness:
    """A runner over a real pipeline with fakes, a fake delivery and a tracker."""

    def __init__(self, *, limit: int = 3, retries: int = 2) -> None:
        self.parts = make_pipeline()
        self.delivery = FakeDelivery()
        self.tracker = OffsetTracker()
        self.failures: list[BaseException] = []
        self.health = HealthState(gauge=self.parts.metrics.degraded)
        self.runner = JobRunner(
            self.parts.pipeline,
            self.delivery,
            self.tracker,
            self.parts.metrics,
            self.health,
            fail=self.failures.append,
            budget=ErrorBudget(limit, 60),
            listing_retries=retries,
        )

    def run(self, *records: Consumed) -> None:
        async def main() -> None:
            jobs = [self.runner.start(record) for record in records]
            await asyncio.gather(*(job.task for job in jobs if job.task is not None), return_exceptions=True)

        asyncio.run(main())

    def letters(self) -> list[dict[str, Any]]:
        return [
            self.parts.codec.decode("dead_letter", o.value or b"")
            for _, outputs in self.delivery.delivered
            for o in outputs
            if o.kind == "dlq"
        ]

    def breaks(self, exc_factory: Callable[[], BaseException], times: int = 10**6) -> None:
        """Make the pipeline raise ``exc_factory()`` for the next ``times`` calls."""
        real = self.parts.pipeline.process
        left = [times]

        async def process(record: Consumed, tickets: list[Ticket]) -> Outcome:
            if left[0] > 0:
                left[0] -= 1
                raise exc_factory()
            return await real(record, tickets)

        self.parts.pipeline.process = process  # type: ignore[method-assign]


def test_a_bug_becomes_an_internal_error_dead_letter_with_a_digest() -> None:
    h = Harness()
    h.breaks(lambda: KeyError("category_path"), times=1)
    h.run(consumed(_value(h.parts)))
    (letter,) = h.letters()
    assert letter["reason"] == "internal_error" and letter["error_class"] == "KeyError"
    assert "traceback" in letter["error_message"] and "test_jobs.py" in letter["error_message"]
    assert h.tracker.committable() == {("in", 0): 1}
    assert h.parts.metrics.value("swatch_internal_errors_total") == 1
    assert h.parts.metrics.value("swatch_dead_letters_total", {"reason": "internal_error"}) == 1
    assert not h.failures


def test_too_many_bugs_stop_the_worker_instead_of_dead_lettering_the_stream() -> None:
    h = Harness(limit=3)
    h.breaks(lambda: TypeError("unsupported operand"))
    h.run(*(consumed(_value(h.parts), offset=i) for i in range(6)))
    assert len(h.letters()) == 3, "only the budget's worth became dead letters"
    assert h.failures and "more than 3 internal errors" in str(h.failures[0])
    assert h.tracker.in_flight() == 3, "the rest stay unfinished: nothing is committed past them"


def test_a_failing_model_is_retried_then_dead_lettered() -> None:
    h = Harness(retries=2)
    h.parts.batcher.fail = 10
    h.run(consumed(_value(h.parts)))
    (letter,) = h.letters()
    assert letter["reason"] == "model_failed" and "illegal memory access" in letter["error_message"]
    assert h.parts.batcher.calls == 3
    assert h.parts.metrics.value("swatch_listing_retries_total", {"cause": "model"}) == 3


def test_a_model_that_recovers_tags_the_listing() -> None:
    h = Harness(retries=2)
    h.parts.batcher.fail = 1
    h.run(consumed(_value(h.parts)))
    assert not h.letters() and h.delivery.delivered[0][1][0].kind == "attributes"


def test_an_unreachable_registry_is_retried_never_dead_lettered() -> None:
    h = Harness()
    h.breaks(lambda: RegistryUnavailableError("schema registry unreachable: connection refused"), times=3)
    h.run(consumed(_value(h.parts)))
    assert not h.letters() and len(h.delivery.delivered) == 1
    assert h.parts.metrics.value("swatch_listing_retries_total", {"cause": "registry"}) == 3
    assert h.health.degraded == {} and h.parts.metrics.value("swatch_degraded", {"component": "registry"}) == 0


def test_a_fatal_error_stops_the_worker_without_finishing_the_record() -> None:
    h = Harness()
    h.breaks(lambda: FatalError("SASL authentication failed"))
    h.run(consumed(_value(h.parts)))
    assert [str(f) for f in h.failures] == ["SASL authentication failed"]
    assert not h.delivery.delivered and h.tracker.committable() == {}


def test_an_output_the_broker_refuses_becomes_a_dead_letter() -> None:
    h = Harness()
    h.delivery.refuse = {"attributes"}
    h.run(consumed(_value(h.parts)))
    (letter,) = h.letters()
    assert letter["reason"] == "output_too_large" and "refused" in letter["error_message"]
    assert h.tracker.committable() == {("in", 0): 1}, "the partition keeps committing"


def test_a_refused_dead_letter_is_cut_then_the_worker_stops() -> None:
    h = Harness()
    h.delivery.refuse = {"dlq"}
    budgets: list[int | None] = []
    real = h.parts.pipeline.dead_letter

    async def spy(record: Consumed, reason: str, exc: BaseException, **kwargs: Any) -> Outcome:
        budgets.append(kwargs.get("budget"))
        return await real(record, reason, exc, **kwargs)

    h.parts.pipeline.dead_letter = spy  # type: ignore[method-assign]
    h.run(consumed(b"garbage"))
    assert budgets == [None, SMALL_LETTER_BYTES, 0]
    assert h.failures and "cannot write a dead letter" in str(h.failures[0])
    assert h.tracker.committable() == {}


def test_a_record_refused_inside_an_aborted_transaction_comes_back_as_a_dead_letter() -> None:
    h = Harness()
    h.delivery.refusals[(("in", 0), 7)] = "Broker: Message size too large"
    h.run(consumed(_value(h.parts), offset=7))
    (letter,) = h.letters()
    assert letter["reason"] == "output_too_large" and "Message size too large" in letter["error_message"]


def test_dropped_jobs_release_their_listing_and_leave_no_trace() -> None:
    h = Harness()
    h.parts.images.delay_s = 5

    async def main() -> None:
        job = h.runner.start(consumed(_value(h.parts)))
        await asyncio.sleep(0.05)
        assert h.runner.oldest_age() > 0
        await h.runner.drop({("in", 0)})
        assert job.task is not None and job.task.cancelled()
        assert len(h.parts.pipeline.sequencer) == 0

    asyncio.run(main())
    assert h.tracker.in_flight() == 0 and not h.delivery.delivered


@pytest.mark.parametrize("times", [1, 25])
def test_error_budget_window(times: int) -> None:
    budget = ErrorBudget(20, 60)
    assert [budget.spend() for _ in range(times)][-1] is (times > 20)
