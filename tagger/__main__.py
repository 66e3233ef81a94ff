"""`python -m tagger synth|train|evaluate|predict`: the model commands without the streaming side.

Handy on a GPU training box that has PyTorch but not Kafka/Redis clients; `swatch` offers the same
commands.
"""

from __future__ import annotations

import typer

from tagger.cli import register

app = typer.Typer(
    name="tagger",
    add_completion=False,
    no_args_is_help=True,
    help="Swatch's model side: synthetic catalog, training, evaluation, prediction.",
)
register(app)

if __name__ == "__main__":
    app()
