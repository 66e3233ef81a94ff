"""Structured logs carry the Kafka coordinates and listing id as fields."""

from __future__ import annotations

import json
import logging

from streams.logs import JsonFormatter


def test_json_lines_lift_context_fields() -> None:
    record = logging.LogRecord("streams.worker", logging.WARNING, __file__, 1, "dead-lettered %s", ("L-1",), None)
    record.listing_id, record.topic, record.partition, record.offset = "L-1", "listings", 3, 1042
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "dead-lettered L-1"
    assert (line["listing_id"], line["topic"], line["partition"], line["offset"]) == ("L-1", "listings", 3, 1042)
    assert line["level"] == "WARNING" and line["time"].endswith("+00:00")
