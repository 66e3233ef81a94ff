"""The rules a decision must follow, and the attribute set it leaves: checked before anything is published."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from streams.errors import SwatchError
from streams.review.items import ReviewItem
from tagger.taxonomy import NOT_VISIBLE, Attribute, Taxonomy, UnknownValueError

ACTIONS = ("CONFIRMED", "CORRECTED", "NOT_VISIBLE", "NOT_APPLICABLE")
DECISION_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
REVIEWER = re.compile(r"^[^\x00-\x1f\x7f]{1,128}$")
MAX_COMMENT = 2000
PAGE_LIMIT = 200


class ReviewError(SwatchError):
    """A request the service refuses, with the HTTP status and a code the API returns."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Choice:
    """One attribute's answer in a decision."""

    name: str
    action: str
    values: tuple[str, ...]


def checked_choices(taxonomy: Taxonomy, item: ReviewItem, raw: Any) -> list[Choice]:
    """The decision's answers, checked: every uncertain attribute answered once, values from the taxonomy."""
    if not isinstance(raw, list) or not raw:
        raise ReviewError(422, "no_attributes", "a decision needs an answer for every uncertain attribute")
    group = taxonomy.groups.get(item.group or "")
    uncertain = {u["name"] for u in item.uncertain}
    allowed = uncertain | {a["name"] for a in item.accepted}
    choices: dict[str, Choice] = {}
    for entry in raw:
        if not isinstance(entry, Mapping):
            raise ReviewError(422, "bad_attribute", "each answer is an object with name, action and values")
        name = str(entry.get("name", ""))
        action = str(entry.get("action", "")).upper()
        if name not in allowed:
            raise ReviewError(422, "unknown_attribute", f"{name!r} is not an attribute of this review")
        if action not in ACTIONS:
            raise ReviewError(422, "bad_action", f"action must be one of {', '.join(ACTIONS)}, not {action!r}")
        if name in choices:
            raise ReviewError(422, "duplicate_attribute", f"{name} is answered twice")
        values = values_of(entry.get("values"))
        attribute = group.attributes.get(name) if group else None
        choices[name] = Choice(name, action, _canonical(attribute, name, action, values))
    missing = sorted(uncertain - set(choices))
    if missing:
        raise ReviewError(422, "unanswered", f"answer every uncertain attribute; missing: {', '.join(missing)}")
    return list(choices.values())


def _canonical(attribute: Attribute | None, name: str, action: str, values: list[str]) -> tuple[str, ...]:
    if action in ("NOT_VISIBLE", "NOT_APPLICABLE"):
        if values:
            raise ReviewError(422, "values_with_action", f"{name}: {action} takes no values")
        return ()
    if not values:
        raise ReviewError(422, "no_values", f"{name}: {action} needs a value")
    if attribute is None:
        raise ReviewError(422, "unknown_attribute", f"{name} is not in the taxonomy of this listing's group")
    if len(values) > 1 and not attribute.multi_label:
        raise ReviewError(422, "single_value", f"{name} takes one value, not {len(values)}")
    try:
        return tuple(dict.fromkeys(attribute.canonical(v) for v in values))
    except UnknownValueError as exc:
        raise ReviewError(422, "unknown_value", f"{name}: {exc}") from exc


def attributes_after(
    taxonomy: Taxonomy, item: ReviewItem, decisions: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The listing's attribute set after a decision: the model's values kept, the reviewer's added (``HUMAN``).

    "Not visible" becomes the value ``not_visible`` where the taxonomy has it for the attribute (as
    the model would say it); "not applicable", and "not visible" elsewhere, leave the attribute out.
    """
    group = taxonomy.groups.get(item.group or "")
    decided = {d["name"] for d in decisions}
    out = [dict(a) for a in item.accepted if a["name"] not in decided]
    for d in decisions:
        declared = item.declared(d["name"])
        declared_set = set(declared.split("|")) if declared else set()
        values = list(d["values"])
        attribute = group.attributes.get(d["name"]) if group else None
        if d["action"] == "NOT_VISIBLE" and attribute is not None and attribute.not_visible:
            values = [NOT_VISIBLE]
        for value in values:
            out.append(
                {
                    "name": d["name"],
                    "value": value,
                    "confidence": 1.0,
                    "source": "HUMAN",
                    "declared_value": declared,
                    "conflicts_with_declared": bool(declared_set) and value not in declared_set,
                }
            )
    return out


def check_reviewer(reviewer: str | None) -> str:
    """A reviewer id: 1-128 printable characters."""
    if not reviewer or not REVIEWER.match(reviewer):
        raise ReviewError(401, "no_reviewer", "who is reviewing? log in (or the auth proxy must set the header)")
    return reviewer


def decision_id_of(body: Mapping[str, Any]) -> str:
    """The client's decision id (what makes a repeated submission harmless), checked."""
    decision_id = str(body.get("decision_id") or "")
    if not DECISION_ID.match(decision_id):
        raise ReviewError(
            422, "bad_decision_id", "decision_id is required: 1-128 characters of letters, digits and ._:-"
        )
    return decision_id


def values_of(raw: Any) -> list[str]:
    """An answer's values: one string or a list of strings."""
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        raise ReviewError(422, "bad_values", "values is a list of strings")
    return list(raw)


def listing_ids_of(raw: Any) -> list[str]:
    """The ``apply_to`` listings: distinct ids, at most a page of them."""
    if not raw:
        return []
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        raise ReviewError(422, "bad_apply_to", "apply_to is a list of listing ids")
    return list(dict.fromkeys(raw))[:PAGE_LIMIT]
