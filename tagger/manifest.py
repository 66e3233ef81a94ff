"""The catalog manifest: the CSV format for a user's own labelled photos (and the synthetic catalog).

Columns:

- ``image``: a path (relative to the manifest's folder, or absolute) or an http(s) URL;
- ``category``: the category path, ``/``-separated (``women/clothing/dresses``); it picks the group;
- ``split``: ``train``, ``val`` or ``test``; blank lets ``swatch train`` make a stratified split;
- ``id`` (optional): the item's id; defaults to the row number;
- one column per attribute (``colour``, ``pattern``, ...): blank = label missing; several values of a
  multi-label attribute are separated by ``|``. Aliases from the taxonomy's merges are accepted.

Unknown columns are kept out of training but do not fail the read, so a catalog export can carry
extra fields.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tagger.errors import TaggerError

SPLITS = ("train", "val", "test")
MULTI_SEPARATOR = "|"
REQUIRED = ("image", "category")


class ManifestError(TaggerError):
    """The manifest cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class CatalogItem:
    """One labelled photo: where it is, its category, its split, and its raw labels per attribute."""

    id: str
    image: str
    category: str
    split: str | None = None
    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def image_location(self, root: Path) -> str:
        """The image's URL, or its absolute path (relative paths are under the manifest's folder)."""
        if self.image.startswith(("http://", "https://")):
            return self.image
        path = Path(self.image)
        return str(path if path.is_absolute() else root / path)


def read_manifest(path: str | Path) -> list[CatalogItem]:
    """Read a manifest CSV; malformed rows raise ManifestError naming the line."""
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"cannot open manifest {path}: {exc}") from exc
    with handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise ManifestError(f"{path}: missing column(s) {', '.join(missing)}; the header is {', '.join(header)}")
        attributes = [c for c in header if c not in (*REQUIRED, "split", "id")]
        items = []
        for row in reader:
            line = reader.line_num
            image, category = (row.get("image") or "").strip(), (row.get("category") or "").strip()
            if not image or not category:
                raise ManifestError(f"{path}:{line}: 'image' and 'category' must not be blank")
            split = (row.get("split") or "").strip().lower() or None
            if split is not None and split not in SPLITS:
                raise ManifestError(f"{path}:{line}: split {split!r} is not one of {', '.join(SPLITS)} (or blank)")
            labels = {}
            for name in attributes:
                cell = (row.get(name) or "").strip()
                if cell:
                    labels[name] = tuple(v.strip() for v in cell.split(MULTI_SEPARATOR) if v.strip())
            items.append(CatalogItem((row.get("id") or "").strip() or str(line - 1), image, category, split, labels))
    if not items:
        raise ManifestError(f"{path}: no rows")
    return items


def write_manifest(path: str | Path, items: Iterable[CatalogItem], attributes: Sequence[str]) -> None:
    """Write items as a manifest CSV with one column per attribute, in the given order."""
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image", "category", "split", *attributes])
        for item in items:
            cells = [MULTI_SEPARATOR.join(item.labels.get(name, ())) for name in attributes]
            writer.writerow([item.id, item.image, item.category, item.split or "", *cells])
