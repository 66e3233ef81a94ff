"""One entry point for every image URL: dispatch on the scheme to the source that fetches it.

Modelled on timm's ``parse_model_name`` (``timm/models/_factory.py``), which splits ``hf-hub:``
and ``timm/`` names off and hands each to its own loader: :class:`ImageRouter` reads the URL's
scheme and hands the URL to the :class:`ImageSource` registered for it. ``http`` and ``https`` go
to :class:`~streams.images.http.HttpImageSource`; another source (S3, say) is one new module with
a class that has the three methods of :class:`ImageSource`, and one more entry in the mapping.

A URL whose scheme has no source ends as ``BLOCKED_URL`` with ``"scheme 'x' not allowed"``; the
router never raises for a bad URL. It applies the source-independent part of the URL policy
(:func:`~streams.images.policy.check_url_form`: length, syntax, scheme, credentials); the source
then applies its own (the HTTP source judges the host and every redirect hop).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Protocol

from streams.config import FetchSettings
from streams.images.http import DEFAULT_CONNECTION_LIMIT, SCHEMES, HttpImageSource
from streams.images.policy import URLRefusedError, check_url_form
from streams.images.result import (
    FetchObserver,
    FetchResult,
    NullObserver,
    Resolver,
    RetryPolicy,
    StartClose,
    report,
)

__all__ = ["ImageRouter", "ImageSource"]


class ImageSource(Protocol):
    """Something that fetches image URLs of some schemes: what the worker depends on.

    ``fetch`` must not raise for bad URLs or misbehaving hosts: every failure is a
    :class:`~streams.images.result.FetchResult` with an outcome and a reason. A source without a
    URL cache always returns the bytes of an ``OK`` image and may ignore ``need_bytes``.
    """

    async def fetch(self, url: str, *, need_bytes: bool = False) -> FetchResult:
        """Fetch one image (with its bytes, not only its hash, when ``need_bytes``)."""

    async def start(self) -> None:
        """Acquire what fetching needs (sessions, clients); called once inside the running event loop."""

    async def close(self) -> None:
        """Release what :meth:`start` acquired."""


class ImageRouter(StartClose):
    """Fetches each URL with the source registered for its scheme.

    Args:
        sources: Scheme (lower case, without ``:``) to source. One source may serve several schemes;
            it is started and closed once.
        observer: Told about the results the router makes itself (refused URLs); the sources tell
            their own observers about theirs.
    """

    def __init__(self, sources: Mapping[str, ImageSource], *, observer: FetchObserver | None = None) -> None:
        self._sources = {scheme.lower(): source for scheme, source in sources.items()}
        self._observer = observer if observer is not None else NullObserver()
        distinct: dict[int, ImageSource] = {}
        for source in self._sources.values():
            distinct.setdefault(id(source), source)
        self._distinct = list(distinct.values())

    @classmethod
    def from_settings(
        cls,
        settings: FetchSettings,
        *,
        resolver: Resolver | None = None,
        observer: FetchObserver | None = None,
        retry_policy: RetryPolicy | None = None,
        connection_limit: int = DEFAULT_CONNECTION_LIMIT,
        url_cache: bool = False,
    ) -> ImageRouter:
        """The router of the worker: ``http`` and ``https`` to one :class:`HttpImageSource`."""
        http = HttpImageSource(
            settings,
            resolver=resolver,
            observer=observer,
            retry_policy=retry_policy,
            connection_limit=connection_limit,
            url_cache=url_cache,
        )
        return cls(dict.fromkeys(SCHEMES, http), observer=observer)

    @property
    def schemes(self) -> frozenset[str]:
        """The schemes a source is registered for."""
        return frozenset(self._sources)

    async def start(self) -> None:
        """Start every source in order; if one fails, close those already started and re-raise."""
        started: list[ImageSource] = []
        try:
            for source in self._distinct:
                await source.start()
                started.append(source)
        except BaseException:
            for source in reversed(started):
                await source.close()
            raise

    async def close(self) -> None:
        """Close every source, the last started first; one failing to close does not keep the rest open."""
        first_error: Exception | None = None
        for source in reversed(self._distinct):
            try:
                await source.close()
            except Exception as exc:
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    async def fetch(self, url: str, *, need_bytes: bool = False) -> FetchResult:
        """Fetch ``url`` with the source of its scheme; a URL no source may take ends without raising.

        ``need_bytes`` is passed on only when set, so sources written before it keep working.

        Returns:
            The source's result, or ``BLOCKED_URL``/``FETCH_FAILED`` for a URL refused by
            :func:`~streams.images.policy.check_url_form` (unknown scheme, credentials, too long, malformed).
        """
        started = time.perf_counter()
        try:
            parsed = check_url_form(url, self._sources)
        except URLRefusedError as refused:
            result = FetchResult.failed(url, refused.outcome, refused.reason, seconds=time.perf_counter() - started)
            report(self._observer, result)
            return result
        source = self._sources[parsed.scheme.lower()]
        return await (source.fetch(url, need_bytes=True) if need_bytes else source.fetch(url))
