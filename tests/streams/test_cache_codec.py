"""The prediction cache's values: format 1 (binary, millionths) is exact, and old JSON entries still read."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable

import pytest

from streams.cache import DECIMALS, FORMAT, Cached, Probabilities, _decode, _encode, rounded

# The demo model's heads and value counts (the same taxonomy for every demo model): realistic sizes.
HEADS = {
    "apparel.type": 5,
    "apparel.colour": 13,
    "apparel.pattern": 5,
    "apparel.sleeve_type": 4,
    "apparel.neck_type": 4,
    "apparel.length": 4,
    "footwear.type": 5,
    "footwear.gender": 3,
    "footwear.colour": 10,
    "footwear.heel_height": 4,
    "footwear.heel_style": 5,
}


def _probs(rng: random.Random, draw: Callable[[], float] | None = None) -> Probabilities:
    draw = draw or rng.random
    return rounded({key: [draw() for _ in range(count)] for key, count in HEADS.items()})


def _round_trip(cached: Cached) -> Cached:
    raw = _encode(cached)
    assert isinstance(raw, bytes)
    return _decode(raw)


def test_a_cached_answer_equals_a_fresh_one_exactly() -> None:
    """rounded(x) == decode(encode(rounded(x))) for 200,000 random values: uniform, tiny, near 1, near ties."""
    rng = random.Random(20240611)
    draws = [
        rng.random,
        lambda: rng.random() ** 8,  # many tiny probabilities
        lambda: 1.0 - rng.random() ** 8,  # and many near 1
        lambda: rng.randrange(0, 10**6 + 1) / 1e6 + rng.choice([-5e-7, 5e-7, 4.999999e-7, 0.0]),  # ties
        lambda: rng.uniform(-2000.0, 2000.0),  # beyond probabilities, still exact
    ]
    seen = 0
    for i in range(3300):
        probs = _probs(rng, draws[i % len(draws)])
        entry = Cached(probs, f"L{i}@{i % 7}" if i % 3 else None)
        raw = _encode(entry)
        assert raw[:1] == bytes([FORMAT])
        back = _decode(raw)
        assert back == entry and back.probabilities == rounded(back.probabilities)
        seen += sum(len(v) for v in probs.values())
    assert seen > 200_000


def test_every_millionth_between_0_and_1_round_trips() -> None:
    values = [k / 1e6 for k in range(0, 10**6 + 1)]
    for start in range(0, len(values), 62 * 1000):
        chunk = values[start : start + 62 * 1000]
        probs = {f"h.{i}": chunk[i : i + 62] for i in range(0, len(chunk), 62)}
        assert rounded(probs) == probs
        assert _round_trip(Cached(probs)).probabilities == probs


def test_layout_names_owner_and_order_are_kept() -> None:
    probs: Probabilities = {"z.last": [0.5], "a.first": [0.25, 0.75], "é.ü": [], "x.y": [1.0, 0.0, 0.000001]}
    for by in (None, "", "L1@1", "listing/with:odd chars@12", "ü" * 300):
        back = _round_trip(Cached(probs, by))
        assert back == Cached(probs, by) and list(back.probabilities) == list(probs)
    assert _round_trip(Cached({})) == Cached({})


def test_it_is_smaller_than_the_json() -> None:
    entry = Cached(_probs(random.Random(1)), "listing-000001@3")
    old = json.dumps({"p": entry.probabilities, "by": entry.by}, separators=(",", ":")).encode()
    assert len(_encode(entry)) < 0.65 * len(old)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 2148.0, -1e12])
def test_what_millionths_cannot_hold_is_written_as_json(bad: float) -> None:
    probs = {"a.b": [0.5, bad]}
    raw = _encode(Cached(probs, "L1@1"))
    assert raw[:1] == b"{"
    back = _decode(raw)
    assert back.by == "L1@1" and back.probabilities["a.b"][0] == 0.5
    assert back.probabilities["a.b"][1] == bad or (math.isnan(bad) and math.isnan(back.probabilities["a.b"][1]))


def test_a_nul_in_a_head_name_is_written_as_json() -> None:
    probs = {"a\0b": [0.5]}
    raw = _encode(Cached(probs))
    assert raw[:1] == b"{" and _decode(raw) == Cached(probs)


def test_entries_in_the_old_json_formats_still_read() -> None:
    probs = {"apparel.colour": [0.1234567891, 0.8765432109]}
    expected = {"apparel.colour": [0.123457, 0.876543]}
    with_owner = json.dumps({"p": probs, "by": "L1@1"}).encode()
    assert _decode(with_owner) == Cached(expected, "L1@1")
    assert _decode(json.dumps({"p": probs, "by": None}).encode()) == Cached(expected)
    assert _decode(json.dumps(probs).encode()) == Cached(expected)  # before entries said who computed them
    assert _decode(json.dumps(probs)) == Cached(expected)  # a str, from a client decoding responses


@pytest.mark.parametrize("cut", [1, 3, 5, 9, 20, -1])
def test_truncated_or_padded_entries_are_value_errors(cut: int) -> None:
    raw = _encode(Cached(_probs(random.Random(2)), "L1@1"))
    with pytest.raises(ValueError):
        _decode(raw[:cut])
    with pytest.raises(ValueError):
        _decode(raw + b"\0\0\0\0")


@pytest.mark.parametrize("raw", [b"", b"\x02abc", b"[1, 2]", b"\xff\xfe", b"null"])
def test_unknown_entries_are_value_errors(raw: bytes) -> None:
    with pytest.raises(ValueError):
        _decode(raw)


def test_decimals_are_six() -> None:
    assert DECIMALS == 6, "format 1 stores millionths: a change of DECIMALS needs a new format"
