"""Streaming commands: worker, review service, demo, its benchmark, producing listings and tailing topics."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from streams.cli.common import _guarded, _io, _settings, _table, _terminate_as_interrupt, app
from streams.codec import SCHEMA_NAMES
from streams.kafka import admin_config

if TYPE_CHECKING:
    from streams.demo import DemoSummary


@app.command()
def worker(
    create_topics_first: Annotated[
        bool, typer.Option("--create-topics/--no-create-topics", help="Create missing topics before starting.")
    ] = False,
) -> None:
    """Tag listings: consume the listings topic, publish attributes, reviews and dead letters (until SIGTERM)."""
    from streams.logs import configure_logging
    from streams.worker import Worker

    settings = _settings()
    configure_logging(settings.log.level, settings.log.format)

    def body() -> int:
        if create_topics_first:
            from streams.topics import create_topics, topic_specs

            create_topics(admin_config(settings.kafka), topic_specs(settings.topics))
        return Worker(settings).run()

    code = _guarded(body)
    raise typer.Exit(code)


@app.command()
def review() -> None:
    """Serve the review queue, its web UI and JSON API (until SIGTERM); see the README's reviewer section."""
    from streams.logs import configure_logging
    from streams.review.app import run

    settings = _settings()
    configure_logging(settings.log.level, settings.log.format)
    _guarded(lambda: run(settings))


@app.command()
def demo(
    listings: Annotated[int, typer.Option("--listings", min=10, max=100_000, help="Listing events to publish.")] = 300,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the summary as JSON here.")] = None,
    html_path: Annotated[Path, typer.Option("--html", help="Where to write the HTML page.")] = Path(
        "swatch-demo/report.html"
    ),
    review: Annotated[
        bool, typer.Option("--review", help="Keep the review UI (and the demo's services) running until Ctrl-C.")
    ] = False,
) -> None:
    """Tag a few hundred synthetic listings end to end: broker, Redis, image server, worker, review UI, demo model."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from streams.demo import DemoOptions, DemoProgress, run_demo

    settings = _settings()
    _terminate_as_interrupt()
    if logging.getLogger().level > logging.INFO:  # without -v, the summary reports the deliberate failures
        logging.getLogger("streams").setLevel(logging.ERROR)
    _io.out.rule("Swatch demo")
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=_io.out,
    ) as bar:
        task = bar.add_task("starting Kafka, Redis, the image server and the worker", total=None, info="")

        def progress(state: DemoProgress) -> None:
            info = f"tagged {state.attribute_events}, review {state.review_requests}, dead letters {state.dead_letters}"
            bar.update(task, description="listings", total=state.expected, completed=state.done, info=info)

        def hold(summary: DemoSummary) -> None:
            bar.stop()
            _print_demo(summary)
            _io.out.print(f"[bold]Review UI: {summary.review_url}[/bold] (log in with any name); Ctrl-C stops the demo")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(1)

        options = DemoOptions(listings=listings, html_path=html_path, hold=hold if review else None)
        try:
            summary = _guarded(lambda: run_demo(settings, options, progress))
        except KeyboardInterrupt:
            _io.err.print("interrupted; embedded servers stopped")
            raise typer.Exit(130) from None
    if not review:
        _print_demo(summary)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(asdict(summary), indent=2) + "\n")
        _io.out.print(f"summary written to {json_path}")
    if summary.dead_letters.get("internal_error"):
        _io.err.print(f"[red]{summary.dead_letters['internal_error']} listing(s) failed inside the worker[/red]")
        raise typer.Exit(1)


def _print_demo(summary: DemoSummary) -> None:
    table = _table("measure", "value", title=f"Swatch demo: model {summary.model_id}")
    where = f"embedded {', '.join(summary.embedded)}" if summary.embedded else "configured"
    rows = [
        ("services", f"Kafka {summary.kafka_bootstrap}, Redis {summary.redis_url} ({where})"),
        ("listings published", summary.listings_published),
        ("attribute events", summary.attribute_events),
        ("review requests", summary.review_requests),
        ("dead letters", ", ".join(f"{k} {v}" for k, v in sorted(summary.dead_letters.items())) or "0"),
        ("image outcomes", ", ".join(f"{k} {v}" for k, v in sorted(summary.image_outcomes.items()))),
        ("cache hits", summary.cache_hits),
        ("images inferred", summary.images_inferred),
        ("identical images shared in flight", summary.images_deduplicated),
        ("declared values contradicted", summary.declared_conflicts),
        ("throughput", f"{summary.throughput_listings_per_s} listings/s"),
        ("latency p50 / p99", f"{summary.latency_p50_s} s / {summary.latency_p99_s} s"),
        ("review queue", f"{summary.review_queue_depth} items at {summary.review_url}"),
        ("wall time", f"{summary.seconds} s"),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    _io.out.print(table)
    _io.out.print(f"HTML page: {summary.html_path}")


# -- produce and tail ---------------------------------------------------------------------------


@app.command()
def produce(  # noqa: PLR0917 - typer commands take one argument per option
    manifest: Annotated[
        Path,
        typer.Option("--from", exists=True, dir_okay=False, help="Catalog manifest CSV: one listing event per row."),
    ],
    base_url: Annotated[
        str | None,
        typer.Option(
            help="URL serving the manifest's folder (e.g. from `swatch serve-images`); local image paths "
            "become URLs under it. Not needed when the manifest's images are http(s) URLs."
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=0, help="Publish only the first N rows.")] = None,
    declared_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of listings whose merchant declares some attributes.")
    ] = 0.3,
    wrong_declared_rate: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="Share of those declarations that name another value than the image's label."
        ),
    ] = 0.1,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the declarations; the same seed, the same events.")] = 0,
    version: Annotated[int, typer.Option(min=1, help="listing_version of every event.")] = 1,
    merchant: Annotated[str, typer.Option(help="merchant_id of every event.")] = "demo-merchant",
    topic: Annotated[str | None, typer.Option(help="Topic to publish to (default SWATCH_TOPICS_LISTINGS).")] = None,
) -> None:
    """Publish one listing event per manifest row to the listings topic, and wait for every acknowledgement."""
    from streams.produce import plan_listings, publish_listings

    settings = _settings()

    def body() -> None:
        planned = plan_listings(
            manifest,
            base_url,
            limit=limit,
            declared_rate=declared_rate,
            wrong_declared_rate=wrong_declared_rate,
            seed=seed,
            version=version,
            merchant_id=merchant,
        )
        report = publish_listings(settings, [p.record for p in planned], topic=topic)
        declaring = sum(1 for p in planned if p.record["declared_attributes"])
        wrong = sum(len(p.wrong_declared) for p in planned)
        _io.out.print(
            f"published {report.sent} listing events to {report.topic} in {report.seconds:.2f} s",
            highlight=False,
            soft_wrap=True,
        )
        _io.out.print(
            f"{declaring} declare attributes; {wrong} declared value(s) deliberately contradict the labels",
            highlight=False,
        )

    _guarded(body)


@app.command()
def tail(  # noqa: PLR0917 - typer commands take one argument per option
    topic: Annotated[
        str,
        typer.Argument(help="listings, attributes, review, decisions or dlq, or a configured topic name."),
    ],
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning/--latest", help="Start at each partition's beginning, or its end.")
    ] = True,
    max_records: Annotated[int | None, typer.Option("--max", min=1, help="Stop after N records.")] = None,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Stop after this many seconds without a record (unless --follow).")
    ] = 5.0,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep reading until Ctrl-C.")] = False,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="One JSON object per line: times as UTC milliseconds, bytes fields as base64."),
    ] = False,
    group: Annotated[
        str | None,
        typer.Option(
            help="Start at this group's committed offsets (e.g. the worker's, to see its backlog). "
            "The group is only read: tail never joins it nor commits."
        ),
    ] = None,
    schema: Annotated[
        str | None,
        typer.Option(help=f"Event on a topic that is not one of Swatch's: {', '.join(SCHEMA_NAMES)}."),
    ] = None,
) -> None:
    """Print the decoded events of a Swatch topic; never joins a group nor commits offsets."""
    from streams.tail import TailRecord, plain, read_topic

    settings = _settings()
    counts = {"records": 0, "undecodable": 0, "tombstones": 0}

    def show(record: TailRecord) -> None:
        counts["records"] += 1
        counts["undecodable"] += record.error is not None
        counts["tombstones"] += record.tombstone
        if as_json:
            typer.echo(json.dumps(record.to_json()))
            return
        from rich.markup import escape

        when = "-"
        if record.timestamp_ms is not None:
            when = plain(datetime.fromtimestamp(record.timestamp_ms / 1000, UTC), times="iso")
        key = escape(record.key) if record.key is not None else "[dim]none[/dim]"
        _io.out.print(
            f"[bold cyan]{escape(record.topic)}[/bold cyan] {escape(f'[{record.partition}]')}@{record.offset}  "
            f"key [bold]{key}[/bold]  {when}",
            highlight=False,
            soft_wrap=True,
        )
        if record.tombstone:
            _io.out.print(f"  [yellow]tombstone:[/yellow] key {key} deleted", highlight=False)
        elif record.error is not None:
            _io.out.print(f"  [red]cannot decode[/red] ({record.size} bytes): {escape(record.error)}", highlight=False)
        else:
            _io.out.print_json(data=plain(record.value, bytes_style="short", times="iso"))

    def body() -> None:
        for record in read_topic(
            settings,
            topic,
            schema=schema,
            from_beginning=from_beginning,
            max_records=max_records,
            idle_timeout_s=None if follow else timeout,
            group=group,
        ):
            show(record)

    try:
        _guarded(body)
    except KeyboardInterrupt:
        _io.err.print("interrupted")
    if not as_json:
        _io.err.print(
            f"{counts['records']} record(s): {counts['undecodable']} undecodable, {counts['tombstones']} tombstone(s)",
            highlight=False,
        )
