"""What each catalog image is, and which look alike: the image side of :mod:`tagger.curate`.

:func:`check_image` reads, hashes (SHA-256 of the bytes) and decodes a file exactly as training
would; :func:`near_duplicate_groups` links perceptual hashes (:func:`imagehash.phash`, 64 bits)
within a Hamming distance, transitively, with pigeonhole bucketing and union-find.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from tagger.preprocess import ImageError, PreprocessConfig, decode_image

HASH_BITS = 64  # imagehash.phash with its default hash_size of 8
_VECTOR_BUCKET = 64  # buckets larger than this are compared with numpy


@dataclass(frozen=True)
class ImageCheck:
    """What one image file turned out to be: its digest and perceptual hash, or why it is unusable."""

    sha256: str | None
    phash: int | None
    reason: str | None = None
    detail: str = ""


def check_image(location: str | Path, config: PreprocessConfig) -> ImageCheck:
    """Read, hash and decode one image file as training would; never raises for a bad file."""
    try:
        data = Path(location).read_bytes()
    except FileNotFoundError:
        return ImageCheck(None, None, "missing_file", f"no such file: {location}")
    except OSError as exc:
        return ImageCheck(None, None, "unreadable", f"cannot read {location}: {exc}")
    digest = hashlib.sha256(data).hexdigest()
    try:
        image = decode_image(data, config)
    except ImageError as exc:
        return ImageCheck(digest, None, exc.reason, str(exc))
    return ImageCheck(digest, perceptual_hash(image))


def perceptual_hash(image: Image.Image) -> int:
    """The 64-bit DCT perceptual hash of an image as an integer (bit distance = Hamming distance)."""
    return int(str(imagehash.phash(image)), 16)


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _link_large_bucket(members: Sequence[tuple[int, int]], max_distance: int, sets: _UnionFind) -> None:
    """Compare every pair of a big bucket (pictures alike in one chunk, e.g. white backgrounds) with numpy."""
    values = np.array([value for value, _ in members], dtype=np.uint64)
    for pos in range(len(members) - 1):
        close = np.flatnonzero(np.bitwise_count(values[pos + 1 :] ^ values[pos]) <= max_distance)
        for offset in close.tolist():
            sets.union(members[pos][1], members[pos + 1 + offset][1])


def near_duplicate_groups(hashes: Sequence[int], max_distance: int, bits: int = HASH_BITS) -> list[list[int]]:
    """Indices of hashes linked (transitively) by a Hamming distance <= max_distance; groups of 2+, in order.

    Pigeonhole bucketing: cut the hash into ``max_distance + 1`` chunks; two hashes that differ in
    at most ``max_distance`` bits agree exactly on at least one chunk, so only hashes that share a
    (chunk, value) bucket are compared. Identical hashes are merged first, so a thousand copies of
    one picture cost nothing.
    """
    if not 0 <= max_distance < bits:
        raise ValueError(f"max_distance must be in 0..{bits - 1}, not {max_distance}")
    sets = _UnionFind(len(hashes))
    first: dict[int, int] = {}
    for i, value in enumerate(hashes):
        sets.union(first.setdefault(value, i), i)
    unique = list(first.items())  # (hash, index of its first row)
    chunks = max_distance + 1
    bounds = [round(c * bits / chunks) for c in range(chunks + 1)]
    for c in range(chunks if max_distance else 0):
        mask = (1 << (bounds[c + 1] - bounds[c])) - 1
        buckets: dict[int, list[tuple[int, int]]] = {}
        for value, index in unique:
            buckets.setdefault((value >> bounds[c]) & mask, []).append((value, index))
        for members in buckets.values():
            if len(members) > _VECTOR_BUCKET:
                _link_large_bucket(members, max_distance, sets)
                continue
            for pos, (value_a, a) in enumerate(members):
                for value_b, b in members[pos + 1 :]:
                    if (value_a ^ value_b).bit_count() <= max_distance:
                        sets.union(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(len(hashes)):
        groups.setdefault(sets.find(i), []).append(i)
    return [members for members in groups.values() if len(members) > 1]
