"""The taxonomy: category groups, their attributes and values, as data loaded from YAML.

A listing's category path maps to one group (longest matching prefix); only that group's
attributes are trained and predicted for it. Each attribute lists canonical values in head order,
merges (aliases mapped to one canonical value before training and evaluation), whether it is
multi-label (sigmoid head) and whether ``not_visible`` is a legal value.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tagger.errors import TaggerError

NOT_VISIBLE = "not_visible"
DEFAULT_TAXONOMY = "taxonomy.yaml"


class TaxonomyError(TaggerError):
    """The taxonomy file is malformed; the message says where."""


class UnknownValueError(TaggerError):
    """A label is not a value (nor an alias) of its attribute."""


def _norm(text: str) -> str:
    """Labels compare case- and separator-insensitively: 'V-Neck', 'v neck' and 'v_neck' are one."""
    return "_".join(text.strip().lower().replace("-", " ").replace("_", " ").split())


@dataclass(frozen=True)
class Attribute:
    """One attribute of a group: canonical values (head order), aliases, and head kind."""

    name: str
    values: tuple[str, ...]
    merges: dict[str, str] = field(default_factory=dict)
    multi_label: bool = False
    not_visible: bool = False

    @property
    def size(self) -> int:
        """Number of outputs of this attribute's head."""
        return len(self.values)

    def canonical(self, label: str) -> str:
        """The canonical value for a label or alias; raises UnknownValueError for anything else."""
        key = _norm(label)
        if key in self.values:
            return key
        if key in self.merges:
            return self.merges[key]
        raise UnknownValueError(f"{label!r} is not a value of {self.name} (values: {', '.join(self.values)})")

    def index(self, label: str) -> int:
        """Head index of a label (after merging)."""
        return self.values.index(self.canonical(label))


@dataclass(frozen=True)
class Group:
    """A category group (e.g. apparel) with the category prefixes that map to it and its attributes."""

    name: str
    categories: tuple[str, ...]
    attributes: dict[str, Attribute]


@dataclass(frozen=True)
class Taxonomy:
    """All groups; the single source of which heads a model has and which apply to a listing."""

    version: int
    groups: dict[str, Group]

    def group_for(self, category_path: str | Iterable[str]) -> Group | None:
        """The group whose category prefix matches the path longest, or None."""
        parts = category_path.split("/") if isinstance(category_path, str) else list(category_path)
        path = [_norm(p) for p in parts if p.strip()]
        best: tuple[int, Group] | None = None
        for group in self.groups.values():
            for prefix in group.categories:
                pre = [_norm(p) for p in prefix.split("/")]
                if path[: len(pre)] == pre and (best is None or len(pre) > best[0]):
                    best = (len(pre), group)
        return best[1] if best else None

    def heads(self) -> Iterator[tuple[str, Group, Attribute]]:
        """Every (head key, group, attribute); the key is ``group.attribute``."""
        for group in self.groups.values():
            for attribute in group.attributes.values():
                yield f"{group.name}.{attribute.name}", group, attribute

    def attribute_names(self) -> list[str]:
        """Every attribute name across groups, in first-seen order (the manifest's label columns)."""
        names: dict[str, None] = {}
        for _, _, attribute in self.heads():
            names.setdefault(attribute.name)
        return list(names)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, the same shape as the YAML file (for the model card)."""
        return {
            "version": self.version,
            "groups": {
                g.name: {
                    "categories": list(g.categories),
                    "attributes": {
                        a.name: {
                            "values": [v for v in a.values if v != NOT_VISIBLE],
                            "merges": dict(a.merges),
                            "multi_label": a.multi_label,
                            "not_visible": a.not_visible,
                        }
                        for a in g.attributes.values()
                    },
                }
                for g in self.groups.values()
            },
        }

    def fingerprint(self) -> str:
        """Short hash of the taxonomy's content: models trained on different taxonomies differ."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, data: Any, source: str = "taxonomy") -> Taxonomy:
        """Validate and build a taxonomy; every error names the path inside the source."""
        if not isinstance(data, dict):
            raise TaxonomyError(f"{source}: expected a mapping with 'version' and 'groups'")
        _only(data, {"version", "groups"}, source)
        version = data.get("version", 1)
        if not isinstance(version, int):
            raise TaxonomyError(f"{source}: version must be an integer")
        groups_data = data.get("groups")
        if not isinstance(groups_data, dict) or not groups_data:
            raise TaxonomyError(f"{source}: 'groups' must be a non-empty mapping of group name to group")
        groups = {}
        for group_name, group_data in groups_data.items():
            groups[_norm(str(group_name))] = _group(
                _norm(str(group_name)), group_data, f"{source}: groups.{group_name}"
            )
        _check_categories(groups, source)
        return cls(version, groups)


def _only(data: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(data) - allowed
    if unknown:
        raise TaxonomyError(
            f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; allowed: {', '.join(sorted(allowed))}"
        )


def _group(name: str, data: Any, where: str) -> Group:
    if not isinstance(data, dict):
        raise TaxonomyError(f"{where}: expected a mapping with 'categories' and 'attributes'")
    _only(data, {"categories", "attributes"}, where)
    categories = data.get("categories")
    if (
        not isinstance(categories, list)
        or not categories
        or not all(isinstance(c, str) and c.strip() for c in categories)
    ):
        raise TaxonomyError(f"{where}.categories: expected a non-empty list of category paths")
    attrs_data = data.get("attributes")
    if not isinstance(attrs_data, dict) or not attrs_data:
        raise TaxonomyError(f"{where}.attributes: expected a non-empty mapping")
    attributes = {}
    for attr_name, attr_data in attrs_data.items():
        attributes[_norm(str(attr_name))] = _attribute(
            _norm(str(attr_name)), attr_data, f"{where}.attributes.{attr_name}"
        )
    return Group(name, tuple(categories), attributes)


def _attribute(name: str, data: Any, where: str) -> Attribute:
    if not isinstance(data, dict):
        raise TaxonomyError(f"{where}: expected a mapping with 'values'")
    _only(data, {"values", "merges", "multi_label", "not_visible"}, where)
    raw_values = data.get("values")
    if not isinstance(raw_values, list) or len(raw_values) < 2 or not all(isinstance(v, str) for v in raw_values):
        raise TaxonomyError(f"{where}.values: expected a list of at least two value names")
    values = [_norm(v) for v in raw_values]
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        raise TaxonomyError(f"{where}.values: duplicate value(s) {', '.join(duplicates)}")
    if NOT_VISIBLE in values:
        raise TaxonomyError(f"{where}.values: write 'not_visible: true' instead of listing {NOT_VISIBLE}")
    for flag in ("multi_label", "not_visible"):
        if not isinstance(data.get(flag, False), bool):
            raise TaxonomyError(f"{where}.{flag}: expected true or false")
    not_visible = bool(data.get("not_visible", False))
    if not_visible:
        values.append(NOT_VISIBLE)
    merges_data = data.get("merges") or {}
    if not isinstance(merges_data, dict):
        raise TaxonomyError(f"{where}.merges: expected a mapping of alias to canonical value")
    merges = {}
    for alias, target in merges_data.items():
        alias_n, target_n = _norm(str(alias)), _norm(str(target))
        if target_n not in values:
            raise TaxonomyError(f"{where}.merges.{alias}: target {target!r} is not one of the values")
        if alias_n in values:
            raise TaxonomyError(f"{where}.merges.{alias}: alias is itself a value; remove one of them")
        merges[alias_n] = target_n
    return Attribute(name, tuple(values), merges, bool(data.get("multi_label", False)), not_visible)


def _check_categories(groups: dict[str, Group], source: str) -> None:
    seen: dict[str, str] = {}
    for group in groups.values():
        for category in group.categories:
            key = "/".join(_norm(p) for p in category.split("/"))
            if key in seen and seen[key] != group.name:
                raise TaxonomyError(f"{source}: category {category!r} maps to both {seen[key]} and {group.name}")
            seen[key] = group.name


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    """Load a taxonomy YAML file, or the default one shipped in the package."""
    if path is None:
        text = resources.files("tagger").joinpath("data", DEFAULT_TAXONOMY).read_text(encoding="utf-8")
        source = f"<default {DEFAULT_TAXONOMY}>"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise TaxonomyError(f"cannot read taxonomy {path}: {exc}") from exc
        source = str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TaxonomyError(f"{source}: not valid YAML: {exc}") from exc
    return Taxonomy.from_dict(data, source)
