"""`swatch demo`: the whole hot path on one machine, with nothing to configure.

It starts (or uses the configured) Kafka and Redis, renders a synthetic catalog and serves it over
local HTTP, publishes a few hundred listing events (some re-using earlier images, a few with
broken, blocked or non-image URLs, a few malformed), runs the worker with the demo model until
every listing has its outcome, and reports: listings tagged, sent to review, dead letters by
reason, cache hits, throughput and latency. It writes an HTML page with each listing's image, its
attributes and confidences, and the review queue.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from streams.codec import Codec, listing_event_id, now_millis
from streams.config import Settings, settings_env
from streams.embedded import free_port, services
from streams.errors import SwatchError
from streams.images_server import ImageServer
from streams.kafka import admin_config
from streams.produce import plan_listings, publish_listings, publish_raw
from streams.tail import read_topic
from streams.topics import create_topics, topic_specs
from streams.worker import Worker
from tagger.synth import SynthConfig, generate_catalog

logger = logging.getLogger(__name__)

DEMO_SESSION_TIMEOUT_MS = 6000  # the embedded broker forms a group after about this long
EMBEDDED_FETCH_WAIT_MS = 10  # the embedded broker holds each fetch for the whole wait


@dataclass
class DemoOptions:
    """What the demo does."""

    listings: int = 300
    html_path: Path = Path("swatch-demo") / "report.html"
    workdir: Path | None = None
    seed: int = 7
    timeout_s: float = 300.0
    # Called with the summary while everything still runs (the review UI, its images); `--review`
    # prints the address there and waits for Ctrl-C. None: the review service stops with the rest.
    hold: Callable[[DemoSummary], None] | None = None


@dataclass
class DemoProgress:
    """Counts so far, for the live display."""

    expected: int
    attribute_events: int = 0
    review_requests: int = 0
    dead_letters: int = 0

    @property
    def done(self) -> int:
        """Listings with their outcome (an attribute event or a dead letter)."""
        return self.attribute_events + self.dead_letters


@dataclass
class DemoSummary:
    """What the demo did and measured (the `--json` file)."""

    listings_published: int = 0
    attribute_events: int = 0
    review_requests: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    cache_hits: int = 0
    images_inferred: int = 0
    images_deduplicated: int = 0
    image_outcomes: dict[str, int] = field(default_factory=dict)
    declared_conflicts: int = 0
    throughput_listings_per_s: float = 0.0
    latency_p50_s: float = 0.0
    latency_p99_s: float = 0.0
    seconds: float = 0.0
    model_id: str = ""
    kafka_bootstrap: str = ""
    redis_url: str = ""
    embedded: tuple[str, ...] = ()
    html_path: str = ""
    review_url: str = ""
    review_queue_depth: int = 0


@dataclass
class _Plan:
    records: list[dict[str, Any]]
    malformed: list[tuple[bytes, bytes]]
    upserts: int


def run_demo(
    settings: Settings, options: DemoOptions, progress: Callable[[DemoProgress], None] | None = None
) -> DemoSummary:
    """Run the demo end to end; ``progress`` is called as outputs arrive."""
    progress = progress or (lambda p: None)
    summary = DemoSummary()
    started = time.monotonic()
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="swatch-demo-"))
    with services(settings) as endpoints:
        summary.kafka_bootstrap, summary.redis_url, summary.embedded = (
            endpoints.kafka_bootstrap,
            endpoints.redis_url,
            endpoints.embedded,
        )
        run = _demo_settings(settings, endpoints.kafka_bootstrap, endpoints.redis_url, "kafka" in endpoints.embedded)
        create_topics(admin_config(run.kafka), topic_specs(run.topics, replication=1 if endpoints.embedded else None))
        n_products = max(10, options.listings * 3 // 4)
        manifest = generate_catalog(workdir / "catalog", SynthConfig(n=n_products, seed=options.seed))
        with ImageServer(manifest.parent) as server, ReviewUI(run, workdir) as review:
            summary.review_url = review.url
            plan = _plan(manifest, server.base_url, options)
            worker = Worker(run)
            summary.model_id = worker.model_id
            outcome: list[int] = []
            thread = threading.Thread(target=lambda: outcome.append(worker.run()), name="swatch-worker", daemon=True)
            thread.start()
            try:
                _wait_assigned(worker, thread)
                published_at = time.monotonic()
                publish_listings(run, plan.records, bootstrap=run.kafka.bootstrap)
                publish_raw(run, run.topics.listings, plan.malformed, bootstrap=run.kafka.bootstrap)
                summary.listings_published = len(plan.records) + len(plan.malformed)
                outputs = _collect(run, plan, progress, options.timeout_s)
                finished_at = time.monotonic()
            finally:
                worker.stop()
                thread.join(60)
            if outcome != [0]:
                raise SwatchError(f"the demo worker exited with {outcome or 'no code'}; see the log above")
            summary.cache_hits = int(worker.metrics.value("swatch_cache_lookups_total", {"result": "hit"}))
            summary.images_inferred = int(worker.metrics.value("swatch_images_inferred_total"))
            summary.images_deduplicated = int(worker.metrics.value("swatch_images_deduplicated_total"))
            _summarise(summary, outputs, finished_at - published_at)
            summary.review_queue_depth = review.wait_for_queue(summary.review_requests)
            summary.html_path = str(write_report(options.html_path, outputs, manifest.parent, summary))
            summary.seconds = round(time.monotonic() - started, 2)
            if options.hold is not None:
                options.hold(summary)
    return summary


class ReviewUI:
    """`swatch review` beside the demo's worker, as a subprocess with the demo's settings."""

    def __init__(self, settings: Settings, workdir: Path, ready_timeout_s: float = 90.0) -> None:
        port = settings.review.port if _port_free(settings.review.host, settings.review.port) else free_port()
        group = settings.kafka.group_id  # the demo run's own (swatch-demo-<run>)
        names = {"group_id": f"{group}-review", "key_prefix": f"{group}:review:"}
        review = settings.review.model_copy(update={"port": port, **names})
        self.settings = settings.model_copy(update={"review": review})
        self.url = f"http://{_url_host(review.host)}:{port}"
        self.log_path = workdir / "review.log"
        self._ready_timeout_s = ready_timeout_s
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ReviewUI:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWATCH_")}
        env.update(settings_env(self.settings))
        env["SWATCH_LOG_FORMAT"] = "text"
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "streams", "review"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(10)

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as response:  # noqa: S310 - our own http URL
            return json.load(response)

    def wait_for_queue(self, expected: int) -> int:
        """Wait until the service is ready and its queue holds ``expected`` items; returns the depth seen."""
        deadline = time.monotonic() + self._ready_timeout_s
        depth = -1
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise SwatchError(f"the review service exited with {self._process.returncode}:\n{tail}")
            with contextlib.suppress(OSError, ValueError):
                depth = int(self._get("/api/counts")["depth"])
                if depth >= expected:
                    return depth
            time.sleep(0.3)
        logger.warning("the review queue holds %d of %d requests after %.0f s", depth, expected, self._ready_timeout_s)
        return max(depth, 0)


def _port_free(host: str, port: int) -> bool:
    if port == 0:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _url_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 - mapping, not binding


def _demo_settings(settings: Settings, bootstrap: str, redis_url: str, embedded_kafka: bool) -> Settings:
    """The worker's settings for the demo: its own group and, on a real cluster, its own topics."""
    run_id = uuid.uuid4().hex[:8]
    topics = settings.topics.model_dump()
    if not embedded_kafka:  # never mix demo events into a real cluster's topics
        topics = {k: f"swatch-demo-{run_id}-{v}" if isinstance(v, str) else v for k, v in topics.items()}
    kafka = settings.kafka.model_dump()
    kafka.update(bootstrap=bootstrap, group_id=f"swatch-demo-{run_id}")
    if embedded_kafka:
        kafka["session_timeout_ms"] = DEMO_SESSION_TIMEOUT_MS
        kafka["fetch_wait_max_ms"] = EMBEDDED_FETCH_WAIT_MS
    fetch = settings.fetch.model_dump()
    fetch["allow_networks"] = [*fetch["allow_networks"], "127.0.0.0/8"]  # the demo's own image server
    worker = settings.worker.model_dump()
    worker.update(metrics_port=0, commit_interval_ms=200)
    redis = settings.redis.model_dump()
    redis.update(url=redis_url, key_prefix=f"swatch-demo-{run_id}:pred:", version_prefix=f"swatch-demo-{run_id}:ver:")
    return Settings(
        kafka=kafka,
        registry=settings.registry,
        redis=redis,
        topics=topics,
        model=settings.model,
        batch=settings.batch,
        fetch=fetch,
        worker=worker,
        review=settings.review,
        log=settings.log,
    )


def _plan(manifest: Path, base_url: str, options: DemoOptions) -> _Plan:
    """Listing events with repeats, broken URLs and malformed events mixed in."""
    planned = plan_listings(
        manifest, base_url, declared_rate=0.3, wrong_declared_rate=0.15, seed=options.seed, merchant_id="demo-merchant"
    )
    n = options.listings
    n_malformed = max(2, n // 50)
    n_broken = max(3, n // 40)
    n_fresh = min(len(planned), n - n_malformed - n_broken)
    records = [p.record for p in planned[:n_fresh]]
    # Re-listings: the same photo sold again under another listing id (the cache and dedup path).
    repeats = [dict(r, listing_id=f"{r['listing_id']}-relist", merchant_id="other-merchant") for r in records]
    records += repeats[: max(0, n - n_malformed - n_broken - n_fresh)]
    broken_urls = [
        base_url + "no-such-image.jpg",  # 404
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata: the SSRF guard refuses it
        base_url + "manifest.csv",  # not an image
    ]
    template = records[0]
    for i in range(n_broken):
        records.append(
            dict(
                template,
                listing_id=f"broken-{i}",
                image_urls=[broken_urls[i % len(broken_urls)]],
                declared_attributes={},
            )
        )
    for record in records:
        record["event_id"] = listing_event_id(record["listing_id"], record["listing_version"])
        record["event_time"] = now_millis()
    codec = Codec()
    invalid = dict(template, listing_id="", event_id=listing_event_id("", 1))
    malformed = [(b"malformed-0", b"this is not an Avro event")]
    malformed.append((b"malformed-1", codec.encode("listing_event", invalid)))
    malformed += [(f"malformed-{i}".encode(), bytes([0xC3, 0x01]) + b"\x00" * 8) for i in range(2, n_malformed)]
    return _Plan(records, malformed, upserts=len(records))


def _wait_assigned(worker: Worker, thread: threading.Thread, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not worker.metrics.value("swatch_assigned_partitions"):
        if not thread.is_alive():
            raise SwatchError("the worker stopped during start-up; see the log above")
        if time.monotonic() > deadline:
            raise SwatchError(f"the worker got no partitions within {timeout_s:.0f}s")
        time.sleep(0.05)


def _collect(
    settings: Settings, plan: _Plan, progress: Callable[[DemoProgress], None], timeout_s: float
) -> dict[str, list[dict[str, Any]]]:
    """Read the output topics until every listing has its attribute event or dead letter."""
    state = DemoProgress(expected=plan.upserts + len(plan.malformed))
    outputs: dict[str, list[dict[str, Any]]] = {"attributes": [], "review": [], "dlq": []}
    streams = {"attributes": settings.topics.attributes, "review": settings.topics.review, "dlq": settings.topics.dlq}
    deadline = time.monotonic() + timeout_s
    while state.done < state.expected:
        if time.monotonic() > deadline:
            raise SwatchError(f"only {state.done} of {state.expected} listings finished within {timeout_s:.0f}s")
        for kind, topic in streams.items():
            for record in read_topic(settings, topic, idle_timeout_s=0.2, bootstrap=settings.kafka.bootstrap):
                if record.value is not None and record.error is None:
                    outputs[kind].append(record.value)
        state.attribute_events = len(outputs["attributes"])
        state.review_requests = len(outputs["review"])
        state.dead_letters = len(outputs["dlq"])
        progress(state)
        if state.done < state.expected:
            for seen in outputs.values():
                seen.clear()  # read again from the start next round: simple and exact
            time.sleep(0.3)
    return outputs


def _summarise(summary: DemoSummary, outputs: dict[str, list[dict[str, Any]]], seconds: float) -> None:
    events = outputs["attributes"]
    summary.attribute_events = len(events)
    summary.review_requests = len(outputs["review"])
    summary.dead_letters = dict(Counter(d["reason"] for d in outputs["dlq"]))
    summary.image_outcomes = dict(Counter(i["outcome"] for e in events for i in e["images"]))
    summary.declared_conflicts = sum(a["conflicts_with_declared"] for e in events for a in e["attributes"])
    latencies = sorted(e["processing_latency_ms"] / 1000 for e in events)
    if latencies:
        summary.latency_p50_s = round(_quantile(latencies, 0.50), 3)
        summary.latency_p99_s = round(_quantile(latencies, 0.99), 3)
    total = len(events) + sum(summary.dead_letters.values())
    summary.throughput_listings_per_s = round(total / seconds, 1) if seconds > 0 else 0.0


def _quantile(ordered: list[float], q: float) -> float:
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


# -- the HTML page --------------------------------------------------------------------------------


def write_report(path: Path, outputs: dict[str, list[dict[str, Any]]], image_root: Path, summary: DemoSummary) -> Path:
    """A self-contained page (thumbnails embedded): every listing's attributes, the review queue, dead letters."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    thumbs: dict[str, str] = {}
    cards = []
    for event in sorted(outputs["attributes"], key=lambda e: e["listing_id"]):
        image = event["images"][0] if event["images"] else None
        thumb = _thumbnail(image_root, image["url"], thumbs) if image else ""
        rows = "".join(_attribute_row(a) for a in event["attributes"])
        problems = "".join(
            f"<div class='bad'>{_e(i['outcome'])}: {_e(i['reason'] or '')}</div>"
            for i in event["images"]
            if i["outcome"] not in ("TAGGED", "CACHE_HIT")
        )
        pending = "<div class='review'>review pending</div>" if event["review_pending"] else ""
        cards.append(
            f"<div class='card'>{thumb}<h3>{_e(event['listing_id'])}</h3>"
            f"<div class='group'>{_e(event['category_group'] or 'no category group')}</div>{problems}{pending}"
            f"<table>{rows}</table></div>"
        )
    queue = "".join(
        _review_row(r["listing_id"], u)
        for r in sorted(outputs["review"], key=lambda r: r["listing_id"])
        for u in r["uncertain"]
    )
    dead = "".join(
        f"<tr><td>{d['original_partition']}@{d['original_offset']}</td><td>{_e(d['reason'])}</td>"
        f"<td>{_e(d['error_class'])}</td><td>{_e(d['error_message'][:200])}</td></tr>"
        for d in outputs["dlq"]
    )
    facts = json.dumps(asdict(summary) | {"html_path": str(path)}, indent=2)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Swatch demo</title><style>
body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}} h1{{margin-bottom:.2em}}
.cards{{display:flex;flex-wrap:wrap;gap:12px}} .card{{width:230px;border:1px solid #ddd;border-radius:6px;padding:8px}}
.card img{{width:100%;height:200px;object-fit:contain;background:#f6f6f6}} .card h3{{margin:.3em 0 0;font-size:14px}}
.group{{color:#777;font-size:12px}} table{{border-collapse:collapse;font-size:12px;width:100%}}
td,th{{padding:2px 4px;border-bottom:1px solid #eee;text-align:left}} .high{{background:#e7f6e7}}
.mid{{background:#fff7dd}} .low{{background:#fde8e8}} .bad{{color:#b00;font-size:12px}}
.review{{color:#a60;font-size:12px;font-weight:bold}} pre{{background:#f6f6f6;padding:8px}}
</style></head><body><h1>Swatch demo</h1><p>Model <code>{_e(summary.model_id)}</code>.
Attributes are coloured by confidence (green &ge; 0.9, yellow &ge; 0.7, red below); <b>!</b> marks a value
that contradicts what the merchant declared.</p><pre>{_e(facts)}</pre>
<h2>Listings ({len(outputs["attributes"])})</h2><div class="cards">{"".join(cards)}</div>
<h2>Review queue ({len(outputs["review"])} requests)</h2><table><tr><th>listing</th><th>attribute</th>
<th>reason</th><th>candidates</th><th>threshold</th><th>declared</th></tr>{queue}</table>
<h2>Dead letters ({len(outputs["dlq"])})</h2><table><tr><th>input</th><th>reason</th><th>error</th>
<th>message</th></tr>{dead}</table></body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path.resolve()


def _attribute_row(a: dict[str, Any]) -> str:
    flag = ""
    if a["conflicts_with_declared"]:
        flag = f" <b title='merchant declared {_e(a['declared_value'] or '')}'>!</b>"
    return (
        f"<tr class='{_level(a['confidence'])}'><td>{_e(a['name'])}</td><td>{_e(a['value'])}{flag}</td>"
        f"<td>{a['confidence']:.2f}</td><td>{_e(a['source'])}</td></tr>"
    )


def _review_row(listing_id: str, u: dict[str, Any]) -> str:
    candidates = ", ".join(f"{c['value']} {c['confidence']:.2f}" for c in u["candidates"]) or "-"
    return (
        f"<tr><td>{_e(listing_id)}</td><td>{_e(u['name'])}</td><td>{_e(u['reason'])}</td><td>{_e(candidates)}</td>"
        f"<td>{u['threshold']:.2f}</td><td>{_e(u['declared_value'] or '')}</td></tr>"
    )


def _thumbnail(root: Path, url: str, cache: dict[str, str]) -> str:
    name = url.rsplit("/", 2)[-2:]
    local = root.joinpath(*name)
    if url not in cache:
        try:
            with Image.open(local) as img:
                img.thumbnail((220, 220))
                buffer = io.BytesIO()
                img.convert("RGB").save(buffer, "JPEG", quality=80)
            cache[url] = base64.b64encode(buffer.getvalue()).decode()
        except OSError:
            cache[url] = ""
    return f"<img src='data:image/jpeg;base64,{cache[url]}' alt=''>" if cache[url] else ""


def _level(confidence: float) -> str:
    return "high" if confidence >= 0.9 else "mid" if confidence >= 0.7 else "low"


def _e(text: object) -> str:
    return html.escape(str(text))
