"""Offsets commit only past a contiguous run of finished records, per partition."""

from __future__ import annotations

import pytest

from streams.tracker import OffsetTracker

TP = ("listings", 0)
OTHER = ("listings", 1)


def test_a_slow_record_holds_back_the_commit_position() -> None:
    tracker = OffsetTracker()
    for offset in (10, 11, 12):
        tracker.start(TP, offset)
    tracker.finish(TP, 11)
    tracker.finish(TP, 12)
    assert tracker.committable() == {}, "10 is still in flight: committing 13 would lose it on a crash"
    tracker.finish(TP, 10)
    assert tracker.committable() == {TP: 13}
    tracker.mark_committed({TP: 13})
    assert tracker.committable() == {}, "nothing new since the last commit"
    assert tracker.in_flight() == 0


def test_partitions_are_independent_and_can_be_forgotten() -> None:
    tracker = OffsetTracker()
    tracker.start(TP, 0)
    tracker.start(OTHER, 5)
    tracker.finish(OTHER, 5)
    assert tracker.committable() == {OTHER: 6}
    assert tracker.in_flight() == 1 and tracker.in_flight({OTHER}) == 0
    tracker.forget({TP})
    tracker.finish(TP, 0)  # a late completion for a revoked partition is ignored
    assert tracker.committable() == {OTHER: 6} and tracker.in_flight() == 0


def test_offsets_must_increase_within_a_partition() -> None:
    tracker = OffsetTracker()
    tracker.start(TP, 3)
    with pytest.raises(ValueError, match="must increase"):
        tracker.start(TP, 2)
