"""Versions of one listing are published in the order they were consumed.

A listing's task takes a ticket right after decoding, before its images are fetched; it publishes
only once the ticket of the previous record of the same listing is released, which happens when
that record has finished (outputs acknowledged, dead-lettered, stale) or was dropped. So a slow
first version cannot be overtaken by a quick second one, and the version gate sees every earlier
version's result.
"""

from __future__ import annotations

import asyncio
import contextlib


class Ticket:
    """A record's place in its listing's queue."""

    def __init__(self, sequencer: Sequencer, listing_id: str, previous: asyncio.Future[None] | None) -> None:
        self._sequencer = sequencer
        self.listing_id = listing_id
        self._previous = previous
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def wait_turn(self) -> None:
        """Return once every earlier record of this listing has finished or been dropped."""
        if self._previous is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._previous)

    def release(self) -> None:
        """This record is finished (or dropped); the next one may publish. Idempotent."""
        if not self.done.done():
            self.done.set_result(None)
        self._sequencer.forget(self)


class Sequencer:
    """The tail of each listing's queue."""

    def __init__(self) -> None:
        self._tails: dict[str, Ticket] = {}

    def enter(self, listing_id: str) -> Ticket:
        """Join the listing's queue behind the record consumed before this one."""
        previous = self._tails.get(listing_id)
        ticket = Ticket(self, listing_id, previous.done if previous is not None else None)
        self._tails[listing_id] = ticket
        return ticket

    def forget(self, ticket: Ticket) -> None:
        """Drop the listing's entry when ``ticket`` is still its tail."""
        if self._tails.get(ticket.listing_id) is ticket:
            del self._tails[ticket.listing_id]

    def __len__(self) -> int:
        return len(self._tails)
