"""Listing images: fetch them from where the listing says, safely, and say why when that fails.

The worker depends on :class:`ImageSource` and gets an :class:`ImageRouter`, which sends each URL
to the source of its scheme (``http``/``https``: :class:`HttpImageSource`). The modules:

* :mod:`~streams.images.result`: :class:`FetchOutcome`, :class:`FetchResult` and the contracts
  (:class:`FetchObserver`, :class:`Resolver`, :class:`RetryPolicy`) every source shares.
* :mod:`~streams.images.policy`: the SSRF policy (URL rules, :func:`check_address`).
* :mod:`~streams.images.sniff`: :func:`sniff_image_format` (magic numbers).
* :mod:`~streams.images.connector`: guarded name resolution and the connect-phase probe.
* :mod:`~streams.images.transfer`: one HTTP hop (per-host slots, redirects, body, error classes).
* :mod:`~streams.images.urlcache`: :class:`UrlCache`, the HTTP source's URL-to-hash LRU.
* :mod:`~streams.images.http`: :class:`HttpImageSource` (alias ``ImageFetcher``).
* :mod:`~streams.images.router`: :class:`ImageRouter` and :class:`ImageSource`.

Usage, inside a running event loop::

    async with ImageRouter.from_settings(settings.fetch, observer=metrics) as images:
        result = await images.fetch(url)
"""

from streams.images.connector import SystemResolver
from streams.images.http import DEFAULT_CONNECTION_LIMIT, HttpImageSource, ImageFetcher
from streams.images.policy import check_address
from streams.images.result import (
    FetchObserver,
    FetchOutcome,
    FetchResult,
    Resolver,
    RetryPolicy,
    UrlCacheOutcome,
)
from streams.images.router import ImageRouter, ImageSource
from streams.images.sniff import sniff_image_format
from streams.images.urlcache import UrlCache

__all__ = [
    "DEFAULT_CONNECTION_LIMIT",
    "FetchObserver",
    "FetchOutcome",
    "FetchResult",
    "HttpImageSource",
    "ImageFetcher",
    "ImageRouter",
    "ImageSource",
    "Resolver",
    "RetryPolicy",
    "SystemResolver",
    "UrlCache",
    "UrlCacheOutcome",
    "check_address",
    "sniff_image_format",
]
