"""The stream worker: listing events in; attribute events, review requests and dead letters out.

Its parts, each owning its failures (the README's "The worker" section describes the behaviour):

- :mod:`~streams.worker.app`: :class:`Worker`, the thin composition: run, stop, fail, drain;
- :mod:`~streams.worker.assembly`: builds the parts and starts them as one ordered chain;
- :mod:`~streams.worker.clients`: the Kafka clients and the thread their blocking calls run on;
- :mod:`~streams.worker.consumer`: poll, dispatch, backpressure (:mod:`~streams.worker.pausing`),
  periodic commits and rebalances;
- :mod:`~streams.worker.jobs`: one task per record, retries and the failure policy;
- :mod:`~streams.worker.pipeline`: one listing (decode, images, gate, decide, outputs), with
  :mod:`~streams.worker.tagging` (fetch, cache, batch), :mod:`~streams.worker.sequencer`
  (per-listing order), :mod:`~streams.worker.gate` (the version rule) and
  :mod:`~streams.worker.letters` (dead letters that fit);
- :mod:`~streams.worker.delivery` (with :mod:`~streams.worker.commits`) and
  :mod:`~streams.worker.transactions`: at-least-once and transactional delivery behind one interface;
- :mod:`~streams.worker.health`: /metrics, /healthz and /readyz on their own thread.
"""

from streams.worker.app import Worker
from streams.worker.jobs import WorkerError
from streams.worker.pipeline import InvalidEventError

__all__ = ["InvalidEventError", "Worker", "WorkerError"]
