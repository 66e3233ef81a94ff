"""Terminal output shared by the model-side commands: the error exit and the progress bars.

The command modules (:mod:`tagger.cli`, :mod:`tagger.bench_cli`, :mod:`tagger.dataset_cli`) import
this one and never each other's helpers, so the dependency between them runs one way.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tagger.errors import TaggerError


def fail(exc: TaggerError) -> typer.Exit:
    """Print the error on stderr and return the exit (status 1) for the command to raise."""
    Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False)
    return typer.Exit(1)


def progress_bars() -> Progress:
    """Progress bars on stderr (stdout stays for the command's output)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=Console(stderr=True),
    )


class ProgressReporter:
    """Draws the training loop's progress: one bar per epoch with loss, then a line of scores."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: Any = None
        self.loss = 0.0

    def epoch_start(self, epoch: int, epochs: int, batches: int) -> None:
        """Start the epoch's bar."""
        self.task = self.progress.add_task(f"epoch {epoch}/{epochs}", total=batches, info="")

    def batch_end(self, loss: float) -> None:
        """Advance the bar, showing a running mean of the loss."""
        self.loss = loss if self.loss == 0.0 else 0.9 * self.loss + 0.1 * loss
        self.progress.update(self.task, advance=1, info=f"loss {self.loss:.3f}")

    def epoch_end(self, epoch: int, summary: dict[str, Any]) -> None:
        """Show the epoch's scores (one plain line per epoch when stderr is not a terminal)."""
        mark = " (best)" if summary["best"] else ""
        line = f"loss {summary['loss']:.3f} val macro-F1 {summary['val_macro_f1']:.4f}{mark}"
        self.progress.update(self.task, info=line)
        if not self.progress.console.is_terminal:  # logs get one plain line per epoch
            self.progress.console.print(f"epoch {epoch}: {line} lr {summary['lr']:.2e}", highlight=False)
