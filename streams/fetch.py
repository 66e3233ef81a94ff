"""Deprecated: the image fetcher is now the :mod:`streams.images` package; import from there.

Kept only while ``streams/worker.py`` still imports ``FetchOutcome``, ``FetchResult`` and ``ImageFetcher`` from here.
"""

import warnings

from streams.images import *  # noqa: F403

warnings.warn("streams.fetch is deprecated: import from streams.images", DeprecationWarning, stacklevel=2)
