"""Event times are UTC milliseconds on the wire; fastavro hands them back as aware datetimes."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


def now_millis() -> int:
    """The current time in UTC milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


def to_millis(value: datetime | int) -> int:
    """Milliseconds since the epoch for a decoded timestamp (aware datetime) or a raw int."""
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return (aware - _EPOCH) // _MILLISECOND  # exact integer arithmetic, no float rounding
    return int(value)
