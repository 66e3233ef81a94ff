"""The URL cache of the HTTP image source: a repeated image URL costs a conditional GET, or nothing.

A bounded, in-memory LRU from the URL a caller asked for to what its last successful ``200`` said:
the content hash of the image, its sniffed format, the validators (``ETag``, ``Last-Modified``) and
how long it stays fresh. No image bytes are kept; an entry is a few hundred bytes, so the default
100,000 entries cost tens of MB.

* **Fresh** (younger than ``Cache-Control: max-age``, minus ``Age``, cut to
  ``url_cache_max_age_s``): the known hash is reused without asking the server.
* **Stale** with validators: the source sends ``If-None-Match`` / ``If-Modified-Since``; a ``304``
  refreshes the entry and confirms the hash, a ``200`` is a normal download that replaces it.
* **Not stored**: ``Cache-Control: no-store``, and responses with neither a validator nor a
  positive freshness lifetime (nothing to gain from remembering them). ``no-cache`` (or
  ``max-age=0``) is stored with a lifetime of 0: always revalidated. Validators longer than a
  header line needs are ignored, so a hostile host cannot make entries large.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from aiohttp import hdrs

__all__ = ["NO_CACHE_HEADERS", "CacheHeaders", "UrlCache", "UrlEntry", "cache_headers"]

MAX_ETAG_CHARS: Final = 256
"""Longer ETags are ignored (not used as a validator)."""
MAX_DATE_CHARS: Final = 64
"""Longer Last-Modified values are ignored (an HTTP date has 29 characters)."""


@dataclass(frozen=True, slots=True)
class CacheHeaders:
    """What a response's headers say about caching it."""

    etag: str | None
    last_modified: str | None
    lifetime: float | None
    """Seconds the response stays fresh (``max-age`` minus ``Age``, capped); None: no ``max-age``."""
    no_store: bool = False
    no_cache: bool = False


NO_CACHE_HEADERS: Final = CacheHeaders(None, None, None)
"""A response that said nothing about caching."""


def cache_headers(headers: Mapping[str, str], max_age_cap: float) -> CacheHeaders:
    """Parse ``ETag``, ``Last-Modified``, ``Cache-Control`` and ``Age`` (aiohttp's headers: case-insensitive)."""
    getall = getattr(headers, "getall", None)
    values = getall(hdrs.CACHE_CONTROL, []) if getall is not None else [headers.get(hdrs.CACHE_CONTROL, "")]
    directives: dict[str, str] = {}
    for part in ",".join(values).split(","):
        name, _, value = part.strip().partition("=")
        if name:
            directives.setdefault(name.strip().lower(), value.strip().strip('"'))
    lifetime: float | None = None
    max_age = directives.get("max-age", "")
    if max_age.isdigit():
        age = headers.get(hdrs.AGE, "").strip()
        lifetime = max(0.0, min(float(max_age) - (float(age) if age.isdigit() else 0.0), max_age_cap))
    etag = headers.get(hdrs.ETAG)
    modified = headers.get(hdrs.LAST_MODIFIED)
    return CacheHeaders(
        etag=etag.strip() if etag and len(etag) <= MAX_ETAG_CHARS else None,
        last_modified=modified.strip() if modified and len(modified) <= MAX_DATE_CHARS else None,
        lifetime=lifetime,
        no_store="no-store" in directives,
        no_cache="no-cache" in directives,
    )


@dataclass(frozen=True, slots=True)
class UrlEntry:
    """What the cache remembers of one URL."""

    digest: bytes
    """SHA-256 of the image (32 bytes; :attr:`content_hash` is its hex form)."""
    image_format: str
    etag: str | None
    last_modified: str | None
    lifetime: float
    """Seconds the entry stays fresh after it was stored or revalidated (0: always revalidate)."""
    expires: float
    """Clock time after which the entry must be revalidated."""

    @property
    def content_hash(self) -> str:
        """Hex SHA-256 of the image, as :class:`~streams.images.FetchResult` carries it."""
        return self.digest.hex()

    @property
    def validators(self) -> dict[str, str]:
        """The conditional request headers this entry allows (empty: it cannot be revalidated)."""
        out: dict[str, str] = {}
        if self.etag:
            out[hdrs.IF_NONE_MATCH] = self.etag
        if self.last_modified:
            out[hdrs.IF_MODIFIED_SINCE] = self.last_modified
        return out

    def fresh(self, now: float) -> bool:
        """Whether the entry may be used without asking the server at clock time ``now``."""
        return now < self.expires


class UrlCache:
    """A bounded LRU of :class:`UrlEntry` by URL; not thread-safe (one event loop uses it).

    Args:
        entries: URLs remembered at most; the least recently used is dropped first. Must be positive.
        max_age_s: Longest an entry is fresh, whatever ``max-age`` the server sent (0: never fresh).
        clock: Monotonic seconds; tests pass their own.
    """

    def __init__(self, entries: int, max_age_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if entries < 1:
            raise ValueError(f"a URL cache needs at least one entry, not {entries}")
        self.entries = entries
        self.max_age_s = max_age_s
        self.clock = clock
        self._by_url: OrderedDict[str, UrlEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_url)

    def __contains__(self, url: object) -> bool:
        return url in self._by_url

    def get(self, url: str) -> UrlEntry | None:
        """The entry of ``url`` (fresh or stale), marked as recently used; None when unknown."""
        entry = self._by_url.get(url)
        if entry is not None:
            self._by_url.move_to_end(url)
        return entry

    def fresh(self, url: str) -> UrlEntry | None:
        """The entry of ``url`` if it may be used without asking the server."""
        entry = self.get(url)
        return entry if entry is not None and entry.fresh(self.clock()) else None

    def discard(self, url: str) -> None:
        """Forget ``url`` (its fetch failed, or its server said ``no-store``)."""
        self._by_url.pop(url, None)

    def store(self, url: str, content_hash: str, image_format: str, headers: CacheHeaders) -> UrlEntry | None:
        """Remember a ``200`` image response, or forget the URL when the response may not be cached."""
        entry = self._entry(bytes.fromhex(content_hash), image_format, headers.etag, headers.last_modified, headers)
        return self._put(url, entry)

    def revalidated(self, url: str, entry: UrlEntry, headers: CacheHeaders) -> UrlEntry | None:
        """Refresh ``entry`` after a ``304``: new validators and lifetime where the ``304`` sent them."""
        lifetime = headers.lifetime if headers.lifetime is not None else entry.lifetime
        refreshed = CacheHeaders(headers.etag, headers.last_modified, lifetime, headers.no_store, headers.no_cache)
        etag = headers.etag or entry.etag
        modified = headers.last_modified or entry.last_modified
        return self._put(url, self._entry(entry.digest, entry.image_format, etag, modified, refreshed))

    def _entry(
        self, digest: bytes, image_format: str, etag: str | None, modified: str | None, headers: CacheHeaders
    ) -> UrlEntry | None:
        if headers.no_store:
            return None
        lifetime = 0.0 if headers.no_cache else min(headers.lifetime or 0.0, self.max_age_s)
        if lifetime <= 0 and not etag and not modified:
            return None  # never fresh and nothing to revalidate with: remembering it saves nothing
        return UrlEntry(digest, image_format, etag, modified, lifetime, self.clock() + lifetime)

    def _put(self, url: str, entry: UrlEntry | None) -> UrlEntry | None:
        if entry is None:
            self.discard(url)
            return None
        self._by_url[url] = entry
        self._by_url.move_to_end(url)
        while len(self._by_url) > self.entries:
            self._by_url.popitem(last=False)
        return entry
