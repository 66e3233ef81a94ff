"""``python -m streams``: the ``swatch`` command, for environments without the console script."""

from streams.cli import run

run()
