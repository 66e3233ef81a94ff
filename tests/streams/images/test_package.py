"""The package's public names (the old single ``streams.fetch`` module is gone)."""

from __future__ import annotations

import importlib

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
        "UrlCache",
        "UrlCacheOutcome",
        "check_address",
        "sniff_image_format",
    }
    assert streams.images.ImageFetcher is streams.images.HttpImageSource  # the worker's old name keeps working


def test_the_old_single_module_is_gone() -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("streams.fetch")
