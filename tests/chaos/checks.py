"""The checks every chaos scenario makes, whatever it broke: input set = output set, and nothing worse."""

from __future__ import annotations

from collections.abc import Sequence

from tests.chaos.harness import WorkerProcess
from tests.chaos.report import ScenarioRow
from tests.chaos.verifier import Verdict, Verifier
from tests.chaos.workload import Sent


def finish(row: ScenarioRow, verifier: Verifier, sent: Sequence[Sent], *procs: WorkerProcess) -> Verdict:
    """Nothing missing, repeats identical, nothing stale, one event_id per version, no lost task errors.

    In-process workers need no ``procs``: the suite-wide guard in ``tests/conftest.py`` watches them.
    """
    verifier.drain()
    verdict = verifier.verdict(list(sent))
    row.add_verdict(verdict)
    row.check(not verdict.missing, "no listing lost", f"{len(verdict.missing)} missing, e.g. {verdict.missing[:5]}")
    row.check(
        not verdict.mismatched,
        "repeats identical apart from event_time/processing_latency_ms",
        f"{len(verdict.mismatched)} differ, e.g. {verdict.mismatched[:2]}",
    )
    row.check(not verdict.stale, "nothing published for an older version", f"{verdict.stale[:5]}")
    row.check(not verdict.undecodable_outputs, "every output decodes", f"{verdict.undecodable_outputs[:3]}")
    versions: dict[tuple[str, int], set[str]] = {}
    for o in verifier.attribute_events():
        assert o.value is not None
        versions.setdefault((o.key, int(o.value["listing_version"])), set()).add(str(o.value["event_id"]))
    split = [f"{k} v{v}: {len(ids)} ids" for (k, v), ids in versions.items() if len(ids) > 1]
    row.check(not split, "one event_id per listing version", f"{split[:5]}")
    for proc in procs:
        lost = proc.unretrieved_task_exceptions()
        row.check(not lost, f"{proc.name}: no 'Task exception was never retrieved'", f"{len(lost)}: {lost[:2]}")
    return verdict
