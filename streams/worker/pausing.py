"""Backpressure: pause every assigned partition at the in-flight bound, resume at half of it.

Modelled on quix-streams' ``processing/pausing.py``: one small object owns the decision and the
state, the consumer loop only reports the count and applies what it is told. Polling goes on while
paused, so the group membership stays alive however slow the model or the image hosts are.
"""

from __future__ import annotations

from enum import Enum


class Action(Enum):
    """What the consumer loop should do with its partitions."""

    NONE = "none"
    PAUSE = "pause"
    RESUME = "resume"


class Backpressure:
    """Hysteresis between ``limit`` (pause) and ``limit // 2`` (resume)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.paused = False

    def update(self, in_flight: int) -> Action:
        """The action for ``in_flight`` listings; the state changes with it."""
        if not self.paused and in_flight >= self.limit:
            self.paused = True
            return Action.PAUSE
        if self.paused and in_flight <= self.limit // 2:
            self.paused = False
            return Action.RESUME
        return Action.NONE

    def room(self, in_flight: int) -> int:
        """How many records the next poll may take."""
        return max(1, self.limit - in_flight)
