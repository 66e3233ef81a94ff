"""Fault injection against real worker processes, a real broker and a real Redis, with an independent verifier.

Modelled on Apache Kafka's ``tests/kafkatest/tests/core/transactions_test.py``: feed a known input,
break something in the middle of the run (kill the worker, kill Redis, cut the broker link, hang
the image hosts, move partitions between workers), let it recover, then read every output topic
from the beginning and check that the input set equals the output set. Nothing is mocked: the
workers are ``python -m streams worker`` subprocesses, the broker is Tansu, Redis is
``redis-server``, the images come over local HTTP.

Each scenario records its row in the table printed at the end of the session, then fails with
every check that did not hold. Short scale by default; ``--chaos-full`` or ``SWATCH_CHAOS_FULL=1``
for the full one (``make chaos``).
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from streams.codec import to_millis
from streams.config import Settings
from tests.chaos.checks import finish
from tests.chaos.harness import RedisServer, WorkerProcess, start_proxied_kafka, wait_until
from tests.chaos.report import ScenarioRow
from tests.chaos.scale import pick
from tests.chaos.slow_images import SlowImageServer
from tests.chaos.verifier import Verifier, largest_stall
from tests.chaos.workload import Feeder, Planned, Row, plan_listings

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

SESSION_TIMEOUT_S = 6.0  # make_settings' session.timeout.ms, short so that restarts and rebalances are fast

MakeWorker = Callable[..., WorkerProcess]
MakeVerifier = Callable[[str, Settings], Verifier]
MakeFeeder = Callable[[str, Settings], Feeder]
MakeSettings = Callable[..., Settings]


def _url(images: str) -> Callable[[Row], str]:
    return lambda row: images + row["image"]


def _pending(verifier: Verifier, feeder: Feeder) -> bool:
    verifier.poll(0.1)
    sent = feeder.snapshot()
    return not feeder.done or len(verifier.covered(sent)) < len({s.planned.key for s in sent})


# -- 1: SIGKILL storm -----------------------------------------------------------------------------

S1_LISTINGS = pick(300, 5000)
S1_KILLS = pick(3, 20)
S1_RATE = pick(8.0, 15.0)  # records a second: the feed outlasts the kills, so every kill lands mid-stream


@pytest.mark.timeout(pick(200, 1500))
def test_sigkill_storm(
    kafka_bootstrap: str,
    redis_url: str,
    prefix: str,
    images: str,
    rows: list[Row],
    settings_for: MakeSettings,
    workers: MakeWorker,
    verifier_for: MakeVerifier,
    feeder_for: MakeFeeder,
    chaos_row: ScenarioRow,
) -> None:
    settings = settings_for(kafka_bootstrap, redis_url)
    worker = workers(settings, "storm", instance_id=f"{prefix}-0")  # static membership: fast restarts
    verifier, feeder = verifier_for(kafka_bootstrap, settings), feeder_for(kafka_bootstrap, settings)
    plan = plan_listings(rows, _url(images), S1_LISTINGS, prefix="K", seed=1, multi_version_share=0.1, junk=pick(3, 10))
    worker.start().wait_assigned(90)
    feeder.start(plan, rate=S1_RATE)
    rng = random.Random(20)
    mid_stream, restart_s = 0, []
    for _ in range(S1_KILLS):
        time.sleep(rng.uniform(0.5, 4.0))
        mid_stream += _pending(verifier, feeder)
        worker.sigkill()
        started = time.monotonic()
        worker.start().wait_assigned(90)
        restart_s.append(time.monotonic() - started)
    feeder.join(600)
    covered = verifier.wait_covered(feeder.snapshot, pick(90, 300))
    worker.sigterm()
    code = worker.wait(60)
    chaos_row.notes += [
        f"kills={S1_KILLS} ({mid_stream} mid-stream)",
        f"restart->assigned max {max(restart_s):.1f}s",
    ]
    finish(chaos_row, verifier, feeder.sent, worker)
    chaos_row.check(covered, "all covered before the final SIGTERM")
    chaos_row.check(mid_stream == S1_KILLS, "every kill landed mid-stream (harness)", f"{mid_stream}/{S1_KILLS}")
    chaos_row.check(code == 0, "the last worker drains on SIGTERM with exit 0", f"exit {code}")
    chaos_row.assert_all()


# -- 2: Redis killed and restarted ----------------------------------------------------------------

S2_OUTAGE_S = pick(10.0, 30.0)
S2_RATE = 8.0
CACHE_RESUME_S = 5.0


@pytest.mark.timeout(pick(150, 300))
def test_redis_killed_and_restarted(
    kafka_bootstrap: str,
    prefix: str,
    images: str,
    rows: list[Row],
    settings_for: MakeSettings,
    workers: MakeWorker,
    verifier_for: MakeVerifier,
    feeder_for: MakeFeeder,
    chaos_row: ScenarioRow,
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path).start()
    try:
        settings = settings_for(kafka_bootstrap, server.url)
        worker = workers(settings, "redis-outage")
        verifier, feeder = verifier_for(kafka_bootstrap, settings), feeder_for(kafka_bootstrap, settings)
        worker.start().wait_assigned(90)
        url = _url(images)

        def phase(kind: str, seconds: float, seed: int) -> list[Planned]:
            count = int(seconds * S2_RATE)
            return plan_listings(rows, url, count, prefix=f"R{kind[0]}", seed=seed, kind=kind)

        feeder.publish(phase("before", 4, 1), rate=S2_RATE)
        server.sigkill()
        killed = time.time()
        feeder.publish(phase("outage", S2_OUTAGE_S, 2), rate=S2_RATE)
        errors = worker.metric("swatch_cache_errors_total") + worker.metric("swatch_redis_skipped_total")
        server.start()
        restarted = time.time()
        hits_at_restart = worker.metric("swatch_cache_lookups_total", result="hit")

        # Redis comes back empty: each image twice, the second a second after the first (when the
        # first has been tagged and written back, not while it is still being inferred), so the
        # second can be a hit.
        pairs = int(pick(10.0, 20.0) * S2_RATE / 2)
        lag = int(S2_RATE / 2)
        after: list[Planned] = []
        for i in range(pairs + lag):
            for n, j in ((1, i), (2, i - lag)):
                if 0 <= j < pairs:
                    row = rows[j % len(rows)]
                    after.append(Planned(f"Ra{j:04d}-{n}", 1, (url(row),), row["category"], "after"))
        feeder.start(after, rate=S2_RATE)
        first_hit: float | None = None
        while not feeder.done and first_hit is None:
            if worker.metric("swatch_cache_lookups_total", result="hit") > hits_at_restart:
                first_hit = time.time() - restarted
            time.sleep(0.1)
        feeder.join(120)
        samples = worker.metrics()
        cache = {
            label: worker.metric(name, samples, **{key: label})
            for name, key, label in (
                ("swatch_cache_lookups_total", "result", "hit"),
                ("swatch_cache_lookups_total", "result", "miss"),
                ("swatch_cache_lookups_total", "result", "error"),
                ("swatch_redis_skipped_total", "op", "get"),
                ("swatch_cache_errors_total", "op", "get"),
            )
        }
        covered = verifier.wait_covered(feeder.snapshot, 90)

        verifier.poll(1)
        outage_keys = {s.planned.key for s in feeder.sent if s.planned.kind == "outage"}
        answered_in_outage = {
            o.key for o in verifier.attribute_events() if o.key in outage_keys and o.time_ms / 1000 < restarted
        }
        early_outage = {
            s.planned.key
            for s in feeder.sent
            if s.planned.kind == "outage" and s.event_time_ms / 1000 < restarted - 3.0
        }
        after_outcomes = Counter(
            o.value["images"][0]["outcome"] for o in verifier.attribute_events() if o.value and o.key.startswith("Ra")
        )
        chaos_row.notes += [
            f"outage {restarted - killed:.1f}s",
            f"answered during outage {len(answered_in_outage)}/{len(outage_keys)}",
            f"first cache hit {first_hit:.1f}s after restart"
            if first_hit is not None
            else "no cache hit after restart",
            "cache lookups at the end " + ", ".join(f"{k}={v:.0f}" for k, v in cache.items()),
            "after-restart image outcomes " + ", ".join(f"{k}={n}" for k, n in sorted(after_outcomes.items())),
        ]
        finish(chaos_row, verifier, feeder.sent, worker)
        chaos_row.check(covered, "all covered")
        chaos_row.check(errors > 0, "the metrics show the outage (cache errors or skipped calls)", f"{errors}")
        chaos_row.check(
            early_outage <= answered_in_outage,
            "tagging continues during the outage (listings sent 3s+ before the restart answered before it)",
            f"{len(early_outage - answered_in_outage)} of {len(early_outage)} unanswered",
        )
        chaos_row.check(
            first_hit is not None and first_hit <= CACHE_RESUME_S,
            f"cache hits resume within {CACHE_RESUME_S:.0f}s of Redis' return",
            "never" if first_hit is None else f"first hit after {first_hit:.1f}s",
        )
        chaos_row.assert_all()
    finally:
        server.stop()


# -- 3: the broker link cut -----------------------------------------------------------------------

S3_CUT_S = pick(10.0, 30.0)
S3_RATE = 8.0
CPU_SHARE_LIMIT = 0.30


@pytest.mark.timeout(pick(150, 300))
def test_broker_link_cut(
    redis_url: str,
    images: str,
    rows: list[Row],
    settings_for: MakeSettings,
    workers: MakeWorker,
    verifier_for: MakeVerifier,
    feeder_for: MakeFeeder,
    chaos_row: ScenarioRow,
    tmp_path: Path,
) -> None:
    broker, proxy = start_proxied_kafka(tmp_path)
    try:
        bootstrap = broker.address
        settings = settings_for(bootstrap, redis_url)
        worker = workers(settings, "link-cut")
        verifier, feeder = verifier_for(bootstrap, settings), feeder_for(bootstrap, settings)
        worker.start().wait_assigned(90)
        pid = worker.pid
        total = int((3 + S3_CUT_S + 6) * S3_RATE)
        feeder.start(plan_listings(rows, _url(images), total, prefix="C", seed=3, multi_version_share=0.1), S3_RATE)
        time.sleep(3)
        cpu_before, wall_before = worker.cpu_seconds(), time.monotonic()
        proxy.cut("blackhole")
        time.sleep(S3_CUT_S)
        cpu_share = (worker.cpu_seconds() - cpu_before) / (time.monotonic() - wall_before)
        alive_after_cut = worker.alive() and worker.pid == pid
        proxy.restore()
        feeder.join(180)
        covered = verifier.wait_covered(feeder.snapshot, pick(90, 180))
        same_pid = worker.alive() and worker.pid == pid
        chaos_row.notes += [
            f"cut {S3_CUT_S:.0f}s",
            f"worker CPU during the cut {cpu_share:.0%} of one core",
            f"connections through the proxy {proxy.connections}, held while cut {proxy.refused}",
        ]
        finish(chaos_row, verifier, feeder.sent, worker)
        chaos_row.check(covered, "resumes: all covered after the link returns")
        chaos_row.check(alive_after_cut and same_pid, "no crash: same pid after the cut", worker.log_tail(5))
        chaos_row.check(
            cpu_share < CPU_SHARE_LIMIT,
            f"no busy spin: CPU during the cut < {CPU_SHARE_LIMIT:.0%} of its wall time",
            f"{cpu_share:.0%}",
        )
        chaos_row.assert_all()
    finally:
        proxy.stop()
        broker.stop()


# -- 4: slow and stuck image hosts ----------------------------------------------------------------

S4_SECONDS = pick(15.0, 60.0)
S4_RATE = 10.0
S4_HANG_EVERY = 10  # one slow and one stuck listing per this many normal ones
FETCH_DEADLINE_S = 3.0
PUBLISH_MARGIN_S = 2.0  # after the fetch deadline: decide, produce, acknowledge


@pytest.mark.timeout(pick(120, 300))
def test_slow_and_stuck_image_hosts(
    kafka_bootstrap: str,
    redis_url: str,
    catalog: Path,
    rows: list[Row],
    settings_for: MakeSettings,
    workers: MakeWorker,
    verifier_for: MakeVerifier,
    feeder_for: MakeFeeder,
    chaos_row: ScenarioRow,
) -> None:
    with SlowImageServer(catalog.parent) as server:
        settings = settings_for(kafka_bootstrap, redis_url, fetch={"total_timeout_s": FETCH_DEADLINE_S})
        worker = workers(settings, "hosts")
        verifier, feeder = verifier_for(kafka_bootstrap, settings), feeder_for(kafka_bootstrap, settings)
        worker.start().wait_assigned(90)
        normal = plan_listings(
            rows, lambda r: server.url("normal", r["image"]), int(S4_SECONDS * S4_RATE), prefix="N", seed=4
        )
        plan: list[Planned] = []
        for i, item in enumerate(normal):
            plan.append(item)
            if i % S4_HANG_EVERY == S4_HANG_EVERY - 1:
                row = rows[i % len(rows)]
                for kind in ("slow", "stuck"):
                    url = server.url(kind, row["image"])  # type: ignore[arg-type]
                    plan.append(Planned(f"{kind}-{i:05d}", 1, (url,), row["category"], kind))
            if i == len(normal) // 2:
                # A burst on the stuck host: more listings at once than the fetcher's per-host
                # concurrency, as when one merchant's CDN hangs while its catalog is re-published.
                for j in range(2 * settings.fetch.per_host_concurrency):
                    row = rows[j % len(rows)]
                    url = server.url("stuck", row["image"])
                    plan.append(Planned(f"burst-{j:03d}", 1, (url,), row["category"], "stuck"))
        feeder.publish(plan, rate=S4_RATE * (1 + 2 / S4_HANG_EVERY))
        covered = verifier.wait_covered(feeder.snapshot, 60)
        samples = worker.metrics()
        rebalances = worker.metric("swatch_rebalances_total", samples, kind="revoke") + worker.metric(
            "swatch_rebalances_total", samples, kind="lost"
        )
        fetches = worker.metric("swatch_image_fetch_seconds_count", samples)
        over = fetches - worker.metric("swatch_image_fetch_seconds_bucket", samples, le="5.0")
        verdict = finish(chaos_row, verifier, feeder.sent, worker)

        kinds = {s.planned.key: s.planned.kind for s in feeder.sent}
        latency: dict[str, list[float]] = {"normal": [], "slow": [], "stuck": []}
        wrong_outcome = []
        for o in verifier.attribute_events():
            assert o.value is not None
            kind = kinds.get(o.key, "normal")
            latency[kind].append((o.time_ms - to_millis(o.value["source_event_time"])) / 1000)
            outcomes = [image["outcome"] for image in o.value["images"]]
            if kind != "normal" and outcomes != ["TIMEOUT"]:
                wrong_outcome.append(f"{o.key}: {outcomes}")
        hung = latency["slow"] + latency["stuck"]
        burst = sorted(
            (o.time_ms - to_millis(o.value["source_event_time"])) / 1000
            for o in verifier.attribute_events()
            if o.value is not None and o.key.startswith("burst-")
        )
        chaos_row.notes += [
            f"slow={len(latency['slow'])} stuck={len(latency['stuck'])} (burst {len(burst)})",
            f"normal={len(latency['normal'])}",
            f"max latency normal {max(latency['normal'], default=0):.2f}s, hung {max(hung, default=0):.2f}s",
            f"burst latency min {min(burst, default=0):.1f}s max {max(burst, default=0):.1f}s",
            f"fetches over 5s (histogram) {over:.0f} of {fetches:.0f}",
            f"deadline {FETCH_DEADLINE_S:.0f}s",
        ]
        chaos_row.check(covered, "all covered")
        chaos_row.check(not wrong_outcome, "slow and stuck images end as TIMEOUT", f"{wrong_outcome[:5]}")
        bound = FETCH_DEADLINE_S + PUBLISH_MARGIN_S
        chaos_row.check(
            max(hung, default=0) <= bound,
            f"slow and stuck listings answered within the fetch deadline + {PUBLISH_MARGIN_S:.0f}s",
            f"max {max(hung, default=0):.2f}s",
        )
        chaos_row.check(
            max(latency["normal"], default=0) < FETCH_DEADLINE_S,
            "normal listings keep flowing: latency below the fetch deadline",
            f"max {max(latency['normal'], default=0):.2f}s",
        )
        chaos_row.check(rebalances == 0, "no rebalance (revoke/lost) while hosts hang", f"{rebalances}")
        chaos_row.check(verdict.inputs == len(kinds), "harness: every input counted")
        chaos_row.assert_all()


# -- 5, 6, 8: predictor raising, outputs the broker refuses, registry unreachable -----------------
# These need a hand inside the worker (a predictor that raises on cue, a producer that refuses, a
# registry client that goes away), so they run the worker in-process: tests/chaos/test_faults.py,
# with the same verifier, feeder and table row as the process scenarios here.


# -- 7: a second worker joins and leaves, twice ---------------------------------------------------

S7_DWELL_S = pick(3.0, 30.0)  # how long each membership state lasts
S7_RATE = pick(8.0, 15.0)
# The embedded broker's group protocol alone leaves a moving partition without an owner for about
# 7 s at a 6 s session timeout when a member joins (measured with bare confluent-kafka consumers, no
# Swatch: benchmarks/rebalance_probe.py); a SIGKILLed member's partitions wait for the session
# timeout and then a rebalance round of 3-4 s. So a partition's output may pause for about the
# session timeout plus one round; the worker may add little on top. Its own share (settling and
# committing revoked work) is checked separately, from its log, and must stay under a second.
STALL_LIMIT_S = SESSION_TIMEOUT_S + 6.0
WORKER_REVOKE_S = 1.0


@pytest.mark.timeout(pick(180, 600))
def test_second_worker_joins_and_leaves(
    kafka_bootstrap: str,
    redis_url: str,
    images: str,
    rows: list[Row],
    settings_for: MakeSettings,
    workers: MakeWorker,
    verifier_for: MakeVerifier,
    feeder_for: MakeFeeder,
    chaos_row: ScenarioRow,
) -> None:
    settings = settings_for(kafka_bootstrap, redis_url)
    first, second = workers(settings, "first"), workers(settings, "second")  # dynamic members, as in a Deployment
    verifier, feeder = verifier_for(kafka_bootstrap, settings), feeder_for(kafka_bootstrap, settings)
    first.start().wait_assigned(90)
    # more than the membership changes can take; the feed is stopped a little after the last one
    plan = plan_listings(rows, _url(images), int(600 * S7_RATE), prefix="J", seed=7, multi_version_share=0.1)
    feeder.start(plan, rate=S7_RATE)
    exits: list[int] = []
    moments: list[str] = []
    for leave in ("SIGTERM", "SIGKILL"):
        time.sleep(S7_DWELL_S)
        second.start().wait_assigned(90)
        wait_until(lambda: first.metric("swatch_assigned_partitions") == 1, 60, "the first worker to give one up")
        time.sleep(S7_DWELL_S)
        moments.append(f"{leave} {time.strftime('%H:%M:%S', time.gmtime())}")
        if leave == "SIGTERM":
            second.sigterm()
            exits.append(second.wait(60))
        else:
            second.sigkill()
        wait_until(lambda: first.metric("swatch_assigned_partitions") == 2, 60, "the first worker to take both")
    time.sleep(S7_DWELL_S)
    still_pending = _pending(verifier, feeder)
    feeder.stop()
    feeder.join(60)
    covered = verifier.wait_covered(feeder.snapshot, pick(90, 180))
    verifier.drain()
    done = verifier.first_output_ms(feeder.sent)
    merged = largest_stall(feeder.sent, verifier.seen, done)
    partitions = sorted({s.partition for s in feeder.sent})
    per_partition = {p: largest_stall(feeder.sent, verifier.seen, done, partition=p) for p in partitions}
    chaos_row.notes += [
        f"largest stall merged {merged}",
        *(f"p{p} {stall}" for p, stall in per_partition.items()),
        f"second worker SIGTERM exit {exits}",
        f"leaves at {', '.join(moments)} UTC",
    ]
    finish(chaos_row, verifier, feeder.sent, first, second)
    chaos_row.check(covered, "all covered")
    chaos_row.check(still_pending, "harness: input still pending after the second leave")
    worst = max([merged.seconds, *(stall.seconds for stall in per_partition.values())])
    chaos_row.check(
        worst <= STALL_LIMIT_S,
        f"no stall longer than {STALL_LIMIT_S:.0f}s while input is pending (any partition)",
        f"{worst:.1f}s",
    )
    revokes = [line for proc in (first, second) for line in proc.log_lines("(work settled in")]
    spent = [float(x) for line in revokes for x in re.findall(r"(?:settled in|commit) ([0-9.]+)s", line)]
    chaos_row.notes.append(f"worker's own revoke handling max {max(spent, default=0):.2f}s over {len(revokes)}")
    chaos_row.check(
        bool(revokes) and max(spent) < WORKER_REVOKE_S,
        f"the worker settles and commits revoked work within {WORKER_REVOKE_S:.0f}s",
        f"{spent}",
    )
    chaos_row.check(exits == [0], "the leaving worker drains on SIGTERM with exit 0", f"{exits}")
    chaos_row.assert_all()
