"""The result every image source returns: outcomes that are Avro symbols, reasons that stay short."""

from __future__ import annotations

from typing import Any

from streams.images import FetchOutcome, FetchResult
from streams.text import MAX_REASON_CHARS


def test_outcome_values_are_avro_symbols() -> None:
    import json
    from pathlib import Path

    schema = json.loads((Path(__file__).parents[3] / "schemas" / "attribute_event.avsc").read_text())
    symbols: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("name") == "ImageOutcome":
                symbols.update(node["symbols"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    assert {outcome.value for outcome in FetchOutcome if outcome is not FetchOutcome.OK} <= symbols


def test_reason_is_clipped_whoever_builds_the_result() -> None:
    result = FetchResult(
        "http://images.test/a.jpg", FetchOutcome.FETCH_FAILED, None, None, "x" * 200_000, None, 1, 0.1, None
    )
    assert result.reason is not None and len(result.reason) == MAX_REASON_CHARS and result.reason.endswith("...")
    refused = FetchResult.failed("gopher://x/", FetchOutcome.BLOCKED_URL, "scheme 'gopher' not allowed")
    assert (refused.reason, refused.attempts, refused.status, refused.data) == (
        "scheme 'gopher' not allowed",
        1,
        None,
        None,
    )
