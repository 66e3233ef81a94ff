"""The package's public names, and the deprecated ``streams.fetch`` shim that still re-exports them."""

from __future__ import annotations

import importlib
import sys

import pytest

import streams.images


def test_public_names() -> None:
    assert set(streams.images.__all__) == {
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
        "check_address",
        "sniff_image_format",
    }
    assert streams.images.ImageFetcher is streams.images.HttpImageSource  # the worker's old name keeps working


def test_streams_fetch_is_a_deprecated_alias() -> None:
    sys.modules.pop("streams.fetch", None)
    with pytest.warns(DeprecationWarning, match=r"import from streams\.images"):
        fetch = importlib.import_module("streams.fetch")
    for name in streams.images.__all__:
        assert getattr(fetch, name) is getattr(streams.images, name), name
