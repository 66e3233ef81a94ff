"""The ``swatch`` command: thin wiring over the library, plus what a person reads on the terminal.

:mod:`~streams.cli.common` holds the Typer apps and the shared helpers; :mod:`~streams.cli.admin`
(configuration, topics, schemas, the local stack) and :mod:`~streams.cli.streaming` (worker, demo,
produce, tail) add their commands to them; the model commands come from :mod:`tagger.cli`.
"""

from __future__ import annotations

from streams.cli import admin, dataset, streaming
from streams.cli.common import app

__all__ = ["admin", "app", "dataset", "run", "streaming"]


def run() -> None:
    """Console-script entry point."""
    app()
