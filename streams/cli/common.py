"""What every ``swatch`` command shares: the Typer apps, consoles, settings loading and error handling."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from streams.config import Settings, load_settings
from streams.errors import ConfigError, SwatchError
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
    """Let SIGTERM and SIGINT unwind like Ctrl-C, so context managers stop the embedded servers.

    SIGINT is set explicitly: a process started in the background of a script inherits SIGINT
    ignored, and then Python raises no KeyboardInterrupt, so "until Ctrl-C" would mean forever.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _wait_for_interrupt() -> None:
    """Block until Ctrl-C, SIGINT or SIGTERM (raised here as KeyboardInterrupt).

    Waits in short slices: the kernel may deliver the signal to any thread (an executor's, the
    image server's), and then Python runs its handler only when the main thread next wakes; a
    wait with no timeout never wakes, and the command would sit there (seen: `swatch
    serve-images` ignoring SIGINT about one start in ten).
    """
    stop = threading.Event()
    while not stop.wait(0.2):
        pass


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
