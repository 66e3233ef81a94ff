"""Small helpers for self-contained HTML reports: escaped tables, base64 PNG plots and JPEG thumbnails.

Everything a page shows is inlined (``data:`` URIs), so a report is one file that can be mailed or
attached to a ticket. Plots use matplotlib's object API (:class:`matplotlib.figure.Figure` renders
with Agg), never pyplot, so no global backend is switched and no window can open.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure
from PIL import Image, UnidentifiedImageError

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; } h3 { margin-bottom: 0.3em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { display: inline-block; margin: 4px; text-align: center; font-size: 0.8em; }
figure img { border: 1px solid #ccc; }
.note { color: #666; font-size: 0.9em; }
.plot { max-width: 100%; }
.error { display: inline-block; border: 1px solid #eee; margin: 4px; }
"""


def esc(value: object) -> str:
    """HTML-escape any value's text (labels and file names come from user files)."""
    return html.escape(str(value), quote=True)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """An HTML table; numbers are right-aligned, every cell is escaped."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{esc(c)}</td>' if isinstance(c, int | float) else f"<td>{esc(c)}</td>" for c in row
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def figure_png(figure: Figure) -> str:
    """A matplotlib Figure as an ``<img>`` with a base64 PNG ``data:`` URI."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img class="plot" alt="plot" src="data:image/png;base64,{data}">'


def thumbnail(location: str | Path, size: int = 112) -> str | None:
    """A small JPEG of an image file as a ``data:`` URI, or None when the file cannot be shown."""
    try:
        with Image.open(location) as image:
            image.draft("RGB", (size * 2, size * 2))
            small = image.convert("RGB")
            small.thumbnail((size, size))
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError):
        return None
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def thumbnail_figure(location: str | Path, caption: str, size: int = 112) -> str:
    """A ``<figure>`` with the image's thumbnail (or a placeholder) and an escaped caption."""
    uri = thumbnail(location, size)
    picture = f'<img alt="" src="{uri}">' if uri else f'<div style="width:{size}px;height:{size}px">(unreadable)</div>'
    return f"<figure>{picture}<figcaption>{esc(caption)}</figcaption></figure>"


def bar_chart(title: str, series: Mapping[str, Mapping[str, int]], width: float = 7.0) -> str:
    """Grouped horizontal bars, one bar per series (e.g. before and after) for every value; as an ``<img>``."""
    values = list(dict.fromkeys(v for counts in series.values() for v in counts))
    rows = max(1, len(values))
    height = 0.75 + 0.22 * rows * max(1, len(series)) ** 0.5  # inches: fixed margins plus the bars
    label_width = 0.2 + 0.075 * max((len(v) for v in values), default=4)  # inches, for 8 pt value names
    # Margins are set by hand: a "tight" layout or bounding box draws every figure twice.
    figure = Figure(figsize=(width, height))
    legend_width = 0.8 if len(series) > 1 else 0.1
    figure.subplots_adjust(
        left=label_width / width, right=1 - legend_width / width, top=1 - 0.3 / height, bottom=0.4 / height
    )
    axes = figure.subplots()
    bar = 0.8 / max(1, len(series))
    for i, (name, counts) in enumerate(series.items()):
        positions = [j + (i - (len(series) - 1) / 2) * bar for j in range(len(values))]
        bars = axes.barh(positions, [counts.get(v, 0) for v in values], height=bar, label=name)
        axes.bar_label(bars, fontsize=7, padding=2)
    axes.set_yticks(range(len(values)), values, fontsize=8)
    axes.tick_params(axis="x", labelsize=7)
    axes.invert_yaxis()
    axes.margins(x=0.12)
    axes.set_title(title, fontsize=10)
    if len(series) > 1:
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return figure_png(figure)


def page(title: str, body: str) -> str:
    """A complete HTML document with the shared style."""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{esc(title)}</h1>\n{body}\n</body></html>\n"
    )
