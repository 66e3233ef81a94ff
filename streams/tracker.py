"""Which offsets may be committed: per partition, up to the first record whose outputs are not all acknowledged.

Records of one partition finish out of order (one listing's images are slow, the next one's are
cached). Committing "the latest offset seen" would lose the slow one on a crash, so each partition
keeps its in-flight offsets in arrival order and the committable position only moves past a
contiguous run of finished records.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

TopicPartitionKey = tuple[str, int]


@dataclass
class PartitionOffsets:
    """In-flight offsets of one partition, in the order they were consumed."""

    order: deque[int] = field(default_factory=deque)
    done: set[int] = field(default_factory=set)
    position: int | None = None  # next offset to commit (last contiguous finished + 1)
    committed: int | None = None  # the position last handed out for commit

    def start(self, offset: int) -> None:
        """A record enters processing."""
        if self.order and offset <= self.order[-1]:
            raise ValueError(f"offset {offset} arrived after {self.order[-1]}: offsets of a partition must increase")
        self.order.append(offset)

    def finish(self, offset: int) -> None:
        """Every output of the record at ``offset`` is acknowledged (or it needed none)."""
        self.done.add(offset)
        while self.order and self.order[0] in self.done:
            finished = self.order.popleft()
            self.done.discard(finished)
            self.position = finished + 1

    @property
    def in_flight(self) -> int:
        """Records started and not yet finished."""
        return len(self.order) - len(self.done)


class OffsetTracker:
    """Per-partition contiguous completion, for the partitions this worker owns."""

    def __init__(self) -> None:
        self._partitions: dict[TopicPartitionKey, PartitionOffsets] = {}

    def start(self, tp: TopicPartitionKey, offset: int) -> None:
        """A record of ``tp`` enters processing."""
        self._partitions.setdefault(tp, PartitionOffsets()).start(offset)

    def finish(self, tp: TopicPartitionKey, offset: int) -> None:
        """A record's outputs are all acknowledged; unknown partitions (revoked meanwhile) are ignored."""
        partition = self._partitions.get(tp)
        if partition is not None:
            partition.finish(offset)

    def committable(self, tps: set[TopicPartitionKey] | None = None) -> dict[TopicPartitionKey, int]:
        """Positions that moved since they were last handed out, for all partitions or the given ones."""
        out = {}
        for tp, partition in self._partitions.items():
            if tps is not None and tp not in tps:
                continue
            if partition.position is not None and partition.position != partition.committed:
                out[tp] = partition.position
        return out

    def mark_committed(self, positions: dict[TopicPartitionKey, int]) -> None:
        """The broker accepted these positions."""
        for tp, position in positions.items():
            partition = self._partitions.get(tp)
            if partition is not None:
                partition.committed = position

    def committed(self, tp: TopicPartitionKey) -> int | None:
        """The position last accepted by the broker for ``tp`` (None before the first commit)."""
        partition = self._partitions.get(tp)
        return None if partition is None else partition.committed

    def forget(self, tps: set[TopicPartitionKey]) -> None:
        """Drop the state of partitions this worker no longer owns."""
        for tp in tps:
            self._partitions.pop(tp, None)

    def in_flight(self, tps: set[TopicPartitionKey] | None = None) -> int:
        """Records in flight, over all partitions or the given ones."""
        return sum(p.in_flight for tp, p in self._partitions.items() if tps is None or tp in tps)
