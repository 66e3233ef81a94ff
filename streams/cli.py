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
from tagger import cli as tagger_cli

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
tagger_cli.register(app)

T = TypeVar("T")


class _Consoles:
    """Consoles made on first use per command, so they honour COLUMNS and redirections then."""

    @property
    def out(self) -> Console:
        return Console()

    @property
    def err(self) -> Console:
        return Console(stderr=True)


_io = _Consoles()


def _table(*columns: str, title: str | None = None) -> Table:
    """A table whose cells wrap instead of being cut with an ellipsis when the terminal is narrow."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        _io.err.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(2) from exc


def _guarded(action: Callable[[], T]) -> T:
    """Run a command body, turning Swatch errors into a red message and exit code 1."""
    try:
        return action()
    except ConfigError as exc:
        _io.err.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(2) from exc
    except SwatchError as exc:
        _io.err.print(f"[red]error:[/red] {exc}", highlight=False)
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
        _io.out.print_json(json.dumps(data))
        return
    table = _table("setting", "value", "variable", title="Swatch configuration")
    for var in ENV_VARS.values():
        table.add_row(f"{var.section}.{var.field}", json.dumps(data[var.section][var.field]), var.name)
    _io.out.print(table)


@config_app.command("env")
def config_env() -> None:
    """List every SWATCH_* variable with what it sets."""
    table = _table("variable", "meaning", title=f"Swatch variables (a YAML file may be named by {CONFIG_FILE_VAR})")
    for var in ENV_VARS.values():
        table.add_row(var.name, var.description + (" [secret]" if var.secret else ""))
    _io.out.print(table)


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
        table = _table("topic", "partitions", "result", "purpose")
        for spec, result in zip(specs, results, strict=True):
            table.add_row(
                result.name, str(result.partitions), "created" if result.created else result.note, spec.purpose
            )
        _io.out.print(table)

    _guarded(body)


# -- schemas ------------------------------------------------------------------------------------


@schemas_app.command("list")
def schemas_list() -> None:
    """Show each event's schema, fingerprint and released versions."""
    schemas = _guarded(SchemaSet)
    table = _table("event", "record", "fingerprint (CRC-64-AVRO)", "released")
    for name in SCHEMA_NAMES:
        current = schemas.current(name)
        releases = ", ".join(s.release for s in schemas.released(name)) or "-"
        table.add_row(name, current.full_name, current.fingerprint.hex(), releases)
    _io.out.print(table)
    _io.out.print(f"from {schemas.directory}")


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
                _io.out.print("Kafka and Redis are both configured; nothing to start.")
                return
            _io.out.print(f"[green]running[/green] {', '.join(endpoints.embedded)} (logs in {endpoints.workdir})")
            _io.out.print("In another shell:")
            for name, value in endpoints.env().items():
                _io.out.print(f"export {name}={value}", highlight=False, soft_wrap=True)
            _io.out.print("Ctrl-C stops both.")
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                _io.out.print("stopping...")
        _io.out.print("stopped.")

    _guarded(body)


@app.command()
def demo(
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the summary as JSON here.")] = None,
) -> None:
    """Start (or use) Kafka and Redis, create the topics, and round-trip one listing through both."""
    from streams.demo import run_demo

    settings = _settings()
    _terminate_as_interrupt()
    _io.out.rule("Swatch demo: foundation smoke run")

    def report(step: str, detail: str) -> None:
        _io.out.print(f"[green]\u2713[/green] [bold]{step}[/bold]: {detail}", highlight=False)

    try:
        summary = _guarded(lambda: run_demo(settings, report))
    except KeyboardInterrupt:
        _io.err.print("interrupted; embedded servers stopped")
        raise typer.Exit(130) from None
    _io.out.print(
        "[yellow]Not tagged:[/yellow] the streaming worker that tags listings is not built yet "
        "(issue 4); this run checked the broker, the codec and the cache only.",
        highlight=False,
    )
    if json_path is not None:
        payload: dict[str, Any] = asdict(summary)
        json_path.write_text(json.dumps(payload, indent=2) + "\n")
        _io.out.print(f"summary written to {json_path}")


def run() -> None:
    """Console-script entry point."""
    app()
