"""What the JSON API and the pages need of :class:`streams.review.app.ReviewApp`.

A protocol, not the class itself: app.py imports :mod:`streams.review.api` and
:mod:`streams.review.pages`, so they cannot import it back.
"""

from __future__ import annotations

from typing import Protocol

import redis.asyncio as aioredis
from aiohttp import web

from streams.config import Settings
from streams.review.metrics import ReviewMetrics
from streams.review.service import ReviewService
from streams.review.store import ReviewStore
from streams.review.visuals import Visuals


class ReviewHost(Protocol):
    """The review app as its web handlers see it (the pages use settings, service, store, reviewer_of)."""

    @property
    def settings(self) -> Settings:
        """The service's settings."""

    @property
    def service(self) -> ReviewService | None:
        """The review service, None while starting."""

    @property
    def store(self) -> ReviewStore:
        """The Redis queue."""

    @property
    def metrics(self) -> ReviewMetrics:
        """The service's metrics."""

    @property
    def redis(self) -> aioredis.Redis:
        """The Redis client (for readiness)."""

    @property
    def visuals(self) -> Visuals:
        """Images and Grad-CAM overlays."""

    def reviewer_of(self, request: web.Request) -> str | None:
        """Who makes the request (proxy header or login cookie)."""
