"""The version gate: never publish a listing version older than one already published.

One place owns the rule. :meth:`VersionGate.is_stale` compares a version with the highest one this
process has decided to publish and the highest one any worker has published (kept in Redis, per
deployment namespace). :meth:`VersionGate.claim` records the decision in memory before the outputs
go out, so a later record of the same listing in this process sees it at once;
:meth:`VersionGate.published` records the acknowledged version in Redis for every worker.

Redis is an accelerator here too: when it cannot be read, only this process's memory decides.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Protocol

from streams.metrics import WorkerMetrics

logger = logging.getLogger(__name__)

LOCAL_MEMORY = 100_000  # listings whose last version this process remembers


class VersionStore(Protocol):
    """Where every worker's published versions are kept (Redis)."""

    async def last_version(self, listing_id: str) -> int | None:
        """The highest published version of a listing, None when unknown or unreadable."""

    async def record_version(self, listing_id: str, version: int) -> None:
        """Remember that ``version`` was published (the store keeps the maximum); never raises."""


class VersionGate:
    """Stale check and record-on-ack for listing versions; see the module docstring."""

    def __init__(self, store: VersionStore, metrics: WorkerMetrics, memory: int = LOCAL_MEMORY) -> None:
        self._store = store
        self._metrics = metrics
        self._memory = memory
        self._claimed: OrderedDict[str, int] = OrderedDict()
        self._writes: set[asyncio.Task[None]] = set()

    async def is_stale(self, listing_id: str, version: int) -> bool:
        """Whether a higher version of the listing was already claimed here or published anywhere."""
        remote = await self._store.last_version(listing_id)
        known = [v for v in (self._claimed.get(listing_id), remote) if v is not None]
        stale = bool(known) and version < max(known)
        self._metrics.version_gate.labels("stale" if stale else "pass").inc()
        self._log(listing_id, version, stale, known)
        return stale

    def claimed_newer(self, listing_id: str, version: int) -> bool:
        """Whether this process already claimed a higher version (no Redis call).

        After :meth:`is_stale` passed, only an earlier record of the same listing in this process can
        have moved the version on meanwhile (other workers own other partitions, hence other listings).
        """
        claimed = self._claimed.get(listing_id)
        stale = claimed is not None and version < claimed
        if stale:
            self._metrics.version_gate.labels("stale").inc()
        self._log(listing_id, version, stale, [claimed] if claimed is not None else [])
        return stale

    @staticmethod
    def _log(listing_id: str, version: int, stale: bool, known: list[int]) -> None:
        if stale:
            logger.info("skipping version %d of %s: version %d is newer", version, listing_id, max(known))

    def claim(self, listing_id: str, version: int) -> None:
        """This process is about to publish ``version``: later records of the listing compare with it."""
        self._claimed[listing_id] = max(version, self._claimed.get(listing_id, version))
        self._claimed.move_to_end(listing_id)
        while len(self._claimed) > self._memory:
            self._claimed.popitem(last=False)

    def published(self, listing_id: str, version: int) -> None:
        """The broker acknowledged ``version``: record it in the shared store (in the background)."""
        self.claim(listing_id, version)
        task = asyncio.get_running_loop().create_task(self._store.record_version(listing_id, version))
        self._writes.add(task)
        task.add_done_callback(self._written)

    def _written(self, task: asyncio.Task[None]) -> None:
        self._writes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("recording a published version failed", exc_info=task.exception())

    async def close(self) -> None:
        """Wait for the version writes in flight (the store bounds each with its timeout)."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
