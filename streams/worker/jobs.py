"""Every consumed record is a job with an owner: it ends acknowledged, dead-lettered, or stops the worker.

:class:`JobRunner` runs one task per record and owns every failure inside it (the README's
"Failure policy" says the same):

- caused by the input: the pipeline already returns a dead letter with a reason; an output the
  broker refuses turns the listing into a dead letter ``output_too_large`` (a refused dead letter is
  cut further, and one that cannot be written at all stops the worker);
- caused by infrastructure (:class:`streams.errors.TransientError`: the registry is unreachable; the
  broker's retriable errors are retried inside delivery): retried with backoff for as long as it
  takes, with no commit past the record; health lists the failing component;
- the model failing (:class:`ModelError`): retried ``listing_retries`` times, then ``model_failed``;
- :class:`streams.errors.FatalError`: the worker stops with exit code 1 and commits nothing past it;
- any other exception is a bug: the record becomes ``internal_error`` with the exception's class
  and a traceback digest, and more than ``max_internal_errors`` in ``internal_error_window_s``
  stops the worker instead of dead-lettering the whole stream.

A task never ends with an exception nobody retrieves: a done-callback reaps each one and treats an
escaped exception as fatal.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from streams.errors import FatalError, SwatchError, TransientError
from streams.metrics import WorkerMetrics
from streams.tracker import OffsetTracker, TopicPartitionKey
from streams.worker.delivery import Delivery, OutputRefusedError, backoff
from streams.worker.health import HealthState
from streams.worker.pipeline import Pipeline
from streams.worker.records import Consumed, Outcome
from streams.worker.sequencer import Ticket
from streams.worker.tagging import ModelError

logger = logging.getLogger(__name__)

SMALL_LETTER_BYTES = 64 * 1024  # a refused dead letter is retried at this size, then without the value


class WorkerError(SwatchError):
    """The worker cannot go on (a fatal Kafka error, too many internal errors, a letter it cannot write)."""


class ErrorBudget:
    """More than ``limit`` unexpected errors within ``window_s`` seconds exhausts the budget."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._times: deque[float] = deque()

    def spend(self) -> bool:
        """Record one error; True when the budget is now exhausted."""
        now = time.monotonic()
        self._times.append(now)
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()
        return len(self._times) > self.limit


@dataclass(eq=False)
class Job:
    """One consumed record on its way through the worker."""

    record: Consumed
    started: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None
    finished: bool = False


@dataclass
class _Letter:
    reason: str
    error: BaseException
    trace: bool = False
    budget: int | None = None


@dataclass
class _Attempts:
    letter: _Letter | None = None
    outcome: Outcome | None = None
    transient: int = 0
    model: int = 0


class JobRunner:
    """Starts, retries, finishes and drops the jobs; see the module docstring."""

    def __init__(
        self,
        pipeline: Pipeline,
        delivery: Delivery,
        tracker: OffsetTracker,
        metrics: WorkerMetrics,
        health: HealthState,
        *,
        fail: Callable[[BaseException], None],
        budget: ErrorBudget,
        listing_retries: int,
    ) -> None:
        self.pipeline = pipeline
        self.delivery = delivery
        self.tracker = tracker
        self.metrics = metrics
        self.health = health
        self._fail = fail
        self._budget = budget
        self.listing_retries = listing_retries
        self._jobs: dict[TopicPartitionKey, dict[int, Job]] = {}

    def start(self, record: Consumed) -> Job:
        """Track the record's offset and start its task."""
        job = Job(record)
        self.tracker.start(record.tp, record.offset)
        self._jobs.setdefault(record.tp, {})[record.offset] = job
        self.metrics.in_flight.inc()
        job.task = asyncio.get_running_loop().create_task(
            self._run(job), name=f"listing {record.topic}[{record.partition}]@{record.offset}"
        )
        job.task.add_done_callback(self._reap)
        return job

    def oldest_age(self) -> float:
        """Seconds the longest-running unfinished job has been in flight.

        Each partition's jobs are kept in the order they started, so its first job is its oldest.
        """
        now = time.monotonic()
        return max((now - next(iter(jobs.values())).started for jobs in self._jobs.values() if jobs), default=0.0)

    def _reap(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # a bug in the runner itself: stop rather than lose the record silently
            logger.error("a listing task failed outside its handlers", exc_info=exc)
            self._fail(exc)

    async def _run(self, job: Job) -> None:
        record = job.record
        tickets: list[Ticket] = []
        state = _Attempts()
        try:
            while True:
                state.outcome = None
                try:
                    if state.letter is None and (refused := self.delivery.refusal(record.tp, record.offset)):
                        refusal = WorkerError(f"the broker refused an output: {refused}")
                        state.letter = _Letter("output_too_large", refusal)
                    if state.letter is not None:
                        state.outcome = await self._dead_letter(record, state.letter)
                    else:
                        state.outcome = await self.pipeline.process(record, tickets)
                    await self.delivery.deliver(record, state.outcome.outputs)
                    self._finish(job, state.outcome)
                    if state.transient:  # the registry answered again
                        self.health.recovered("registry")
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if not await self._recover(record, exc, state):
                        return
        finally:
            for ticket in tickets:
                ticket.release()

    async def _recover(self, record: Consumed, exc: Exception, state: _Attempts) -> bool:
        """Apply the failure policy to ``exc``; False when the job ends here (the worker is stopping)."""
        if isinstance(exc, OutputRefusedError):
            state.letter = self._refused(record, state.outcome, state.letter, exc)
        elif isinstance(exc, TransientError):
            self.metrics.retries.labels("registry").inc()
            self.health.failing("registry", str(exc))
            delay = backoff(state.transient)
            state.transient += 1
            logger.warning("%s; retry %d in %.2fs", exc, state.transient, delay, extra=record.context)
            await asyncio.sleep(delay)
            return True
        elif isinstance(exc, ModelError):
            state.model += 1
            self.metrics.retries.labels("model").inc()
            if state.model > self.listing_retries:
                state.letter = _Letter("model_failed", exc)
            else:
                logger.warning("%s; retry %d", exc, state.model, extra=record.context)
                await asyncio.sleep(backoff(state.model))
            return True
        elif isinstance(exc, FatalError):
            self._fail(exc)
            return False
        else:
            state.letter = self._internal(record, state.letter, exc)
        return state.letter is not None

    async def _dead_letter(self, record: Consumed, letter: _Letter) -> Outcome:
        return await self.pipeline.dead_letter(
            record, letter.reason, letter.error, trace=letter.trace, budget=letter.budget
        )

    def _refused(
        self, record: Consumed, outcome: Outcome | None, letter: _Letter | None, exc: OutputRefusedError
    ) -> _Letter | None:
        """The next dead letter to try after a refusal, or None when the worker has to stop."""
        if outcome is None or outcome.result != "dead_letter":
            return _Letter("output_too_large", exc)
        if letter is None or letter.budget is None:
            reason = letter.reason if letter else outcome.reason or "output_too_large"
            return _Letter(reason, exc, budget=SMALL_LETTER_BYTES)
        if letter.budget > 0:
            return _Letter(letter.reason, exc, budget=0)
        self._fail(WorkerError(f"cannot write a dead letter for {record.context}: {exc}"))
        return None

    def _internal(self, record: Consumed, letter: _Letter | None, exc: Exception) -> _Letter | None:
        """A bug: a dead letter ``internal_error``, or None when the worker has to stop."""
        if letter is not None:  # building or writing the dead letter itself failed
            self._fail(WorkerError(f"cannot write a dead letter for {record.context}: {type(exc).__name__}: {exc}"))
            return None
        self.metrics.internal_errors.inc()
        logger.error("unexpected failure on a record", exc_info=exc, extra=record.context)
        if self._budget.spend():
            self._fail(
                WorkerError(
                    f"more than {self._budget.limit} internal errors in {self._budget.window_s:.0f}s "
                    f"(the last: {type(exc).__name__}: {exc}); stopping instead of dead-lettering the stream"
                )
            )
            return None
        return _Letter("internal_error", exc, trace=True)

    def _finish(self, job: Job, outcome: Outcome) -> None:
        if job.finished:
            return
        job.finished = True
        record = job.record
        self.tracker.finish(record.tp, record.offset)
        jobs = self._jobs.get(record.tp)
        if jobs is not None:
            jobs.pop(record.offset, None)
        self.metrics.in_flight.dec()
        self.metrics.listings.labels(outcome.result).inc()
        if outcome.result == "dead_letter":
            self.metrics.dead_letters.labels(outcome.reason or "unknown").inc()

    async def drop(self, keys: set[TopicPartitionKey]) -> None:
        """Forget the partitions' unfinished work: its offsets are not committed, so it will be redone."""
        tasks = []
        for tp in keys:
            for job in list(self._jobs.pop(tp, {}).values()):
                if not job.finished:
                    job.finished = True
                    self.metrics.in_flight.dec()
                if job.task is not None and not job.task.done():
                    job.task.cancel()
                    tasks.append(job.task)
        self.tracker.forget(keys)
        self.delivery.forget(keys)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def partitions(self) -> set[TopicPartitionKey]:
        """Partitions with jobs."""
        return set(self._jobs)
