"""Training checkpoints that a stopped run continues from, and a polite stop on SIGTERM/SIGINT.

A checkpoint holds the model, optimiser, scheduler and augmentation generator plus plain progress
values (``state``): ``epoch`` is the last finished epoch and ``step`` the batches already done in
the next one. The training loop writes one after every epoch and, within an epoch, whenever
``checkpoint_every_s`` has passed, so a run killed outright loses at most that much work; a run
asked to stop (``kill -TERM``, Ctrl-C, a pod's termination) writes one at the next batch and ends
with :class:`TrainStopped`. Files are written beside their final name and renamed, so a crash
mid-write leaves the previous checkpoint intact. Only tensors and plain values are stored, and they
are read back with ``weights_only=True``.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from tagger.errors import TaggerError

logger = logging.getLogger(__name__)


class TrainStopped(TaggerError):
    """The run was asked to stop; its checkpoint is written and ``--resume`` continues it."""


def save_checkpoint(path: Path, parts: dict[str, Any], state: dict[str, Any]) -> None:
    """Write ``parts`` (objects with ``state_dict()``, or tensors) and ``state`` atomically."""
    payload: dict[str, Any] = {"state": dict(state)}
    for name, part in parts.items():
        payload[name] = part.state_dict() if hasattr(part, "state_dict") else part
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """The stored payload; a missing ``step`` (a checkpoint from before mid-epoch saves) is 0."""
    checkpoint: dict[str, Any] = torch.load(path, map_location=device, weights_only=True)
    checkpoint["state"].setdefault("step", 0)
    checkpoint["state"].setdefault("loss_sum", 0.0)
    return checkpoint


class StopRequest:
    """Set by SIGTERM or SIGINT while :func:`stop_on_signals` is active; polled between batches."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name = ""

    def set(self, name: str = "request") -> None:
        """Ask the run to stop; ``name`` says who asked (the signal's name)."""
        self.signal_name = name
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()


@contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[StopRequest]:
    """Turn SIGTERM/SIGINT into ``stop`` for the duration; a second signal is not caught, so an
    impatient operator still gets the default behaviour. Off the main thread nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        logger.warning("%s: writing a checkpoint at the next batch, then stopping", name)
        stop.set(name)
        for number, old in previous.items():  # the next signal acts as if we were not here
            signal.signal(number, old)

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for number, old in previous.items():
            signal.signal(number, old)
