"""The ``swatch`` command: thin wiring over the library, plus what a person reads on the terminal."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from streams.codec import SCHEMA_NAMES, SchemaSet
from streams.config import CONFIG_FILE_VAR, ENV_VARS, Settings, load_settings
from streams.errors import ConfigError, SwatchError
from streams.kafka import admin_config

app = typer.Typer(
    name="swatch",
    help="Tag product listings with visual attributes, in near real time.",
    no_args_is_help=True,
    add_completion=False,
)
config_app = typer.Typer(help="Show the resolved configuration and the variables that set it.", no_args_is_help=True)
topics_app = typer.Typer(help="Create Swatch's Kafka topics.", no_args_is_help=True)
dev_app = typer.Typer(help="Local development helpers.", no_args_is_help=True)
schemas_app = typer.Typer(help="Inspect the Avro schemas.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(topics_app, name="topics")
app.add_typer(dev_app, name="dev")
app.add_typer(schemas_app, name="schemas")

console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        err_console.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(2) from exc


def _guarded(action: Callable[[], T]) -> T:
    """Run a command body, turning Swatch errors into a red message and exit code 1."""
    try:
        return action()
    except ConfigError as exc:
        err_console.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(2) from exc
    except SwatchError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from exc


def _terminate_as_interrupt() -> None:
    """Let SIGTERM unwind like Ctrl-C, so context managers stop the embedded servers."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO to stderr.")] = False,
) -> None:
    """Swatch: visual attributes for product listings, from Kafka to Kafka."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


# -- config -------------------------------------------------------------------------------------


@config_app.command("show")
def config_show(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Print the resolved configuration, secrets masked."""
    data = _settings().redacted()
    if as_json:
        console.print_json(json.dumps(data))
        return
    table = Table("setting", "value", "variable", title="Swatch configuration")
    for var in ENV_VARS.values():
        table.add_row(f"{var.section}.{var.field}", json.dumps(data[var.section][var.field]), var.name)
    console.print(table)


@config_app.command("env")
def config_env() -> None:
    """List every SWATCH_* variable with what it sets."""
    table = Table("variable", "meaning", title=f"Swatch variables (a YAML file may be named by {CONFIG_FILE_VAR})")
    for var in ENV_VARS.values():
        table.add_row(var.name, var.description + (" [secret]" if var.secret else ""))
    console.print(table)


# -- topics -------------------------------------------------------------------------------------


@topics_app.command("create")
def topics_create(
    partitions: Annotated[
        int | None, typer.Option(min=1, help="Partitions (default SWATCH_TOPICS_PARTITIONS).")
    ] = None,
    replication: Annotated[
        int | None,
        typer.Option(min=-1, help="Replication factor, -1 = broker default (default SWATCH_TOPICS_REPLICATION)."),
    ] = None,
) -> None:
    """Create the five topics; running it again only reports what already exists."""
    from streams.topics import create_topics, topic_specs

    settings = _settings()

    def body() -> None:
        specs = topic_specs(settings.topics, partitions=partitions, replication=replication)
        results = create_topics(admin_config(settings.kafka), specs)
        table = Table("topic", "partitions", "result", "purpose")
        for spec, result in zip(specs, results, strict=True):
            table.add_row(
                result.name, str(result.partitions), "created" if result.created else result.note, spec.purpose
            )
        console.print(table)

    _guarded(body)


# -- schemas ------------------------------------------------------------------------------------


@schemas_app.command("list")
def schemas_list() -> None:
    """Show each event's schema, fingerprint and released versions."""
    schemas = _guarded(SchemaSet)
    table = Table("event", "record", "fingerprint (CRC-64-AVRO)", "released")
    for name in SCHEMA_NAMES:
        current = schemas.current(name)
        releases = ", ".join(s.release for s in schemas.released(name)) or "-"
        table.add_row(name, current.full_name, current.fingerprint.hex(), releases)
    console.print(table)
    console.print(f"from {schemas.directory}")


# -- dev and demo -------------------------------------------------------------------------------


@dev_app.command("up")
def dev_up() -> None:
    """Run an embedded Kafka broker and Redis in the foreground until Ctrl-C."""
    from streams.embedded import services

    settings = _settings()
    _terminate_as_interrupt()

    def body() -> None:
        with services(settings) as endpoints:
            if not endpoints.embedded:
                console.print("Kafka and Redis are both configured; nothing to start.")
                return
            console.print(f"[green]running[/green] {', '.join(endpoints.embedded)} (logs in {endpoints.workdir})")
            console.print("In another shell:")
            for name, value in endpoints.env().items():
                console.print(f"export {name}={value}", highlight=False, soft_wrap=True)
            console.print("Ctrl-C stops both.")
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                console.print("stopping...")
        console.print("stopped.")

    _guarded(body)


@app.command()
def demo(
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the summary as JSON here.")] = None,
) -> None:
    """Start (or use) Kafka and Redis, create the topics, and round-trip one listing through both."""
    from streams.demo import run_demo

    settings = _settings()
    _terminate_as_interrupt()
    console.rule("Swatch demo: foundation smoke run")

    def report(step: str, detail: str) -> None:
        console.print(f"[green]\u2713[/green] [bold]{step}[/bold]: {detail}", highlight=False)

    try:
        summary = _guarded(lambda: run_demo(settings, report))
    except KeyboardInterrupt:
        err_console.print("interrupted; embedded servers stopped")
        raise typer.Exit(130) from None
    console.print(
        "[yellow]Not tagged:[/yellow] the streaming worker that tags listings is not built yet "
        "(issue 4); this run checked the broker, the codec and the cache only.",
        highlight=False,
    )
    if json_path is not None:
        payload: dict[str, Any] = asdict(summary)
        json_path.write_text(json.dumps(payload, indent=2) + "\n")
        console.print(f"summary written to {json_path}")


def run() -> None:
    """Console-script entry point."""
    app()
