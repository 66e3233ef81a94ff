"""What the item page shows besides data: the listing's images and the Grad-CAM overlay of an attribute.

The browser never fetches merchant URLs: images come through the worker's SSRF-safe fetcher
(``SWATCH_FETCH_*``) and a small in-memory cache. Torch and Grad-CAM (seconds of imports) load on
the first overlay asked for, and only the model under review (``SWATCH_MODEL_DIR``) can explain.
"""

from __future__ import annotations

import asyncio
import io
import logging
from typing import TYPE_CHECKING

from streams.config import Settings
from streams.errors import SwatchError
from streams.images import ImageFetcher
from streams.review.rules import ReviewError
from streams.review.store import ReviewStore
from tagger.errors import TaggerError

if TYPE_CHECKING:
    from tagger.predict import Predictor

logger = logging.getLogger(__name__)

IMAGE_CACHE = 256  # images and overlays kept in memory


class Visuals:
    """Images and Grad-CAM overlays of pending items."""

    def __init__(self, settings: Settings, store: ReviewStore, predictor: Predictor | None = None) -> None:
        self.settings = settings
        self.store = store
        self.fetcher = ImageFetcher(settings.fetch)
        self.predictor = predictor
        self._predictor_loaded = predictor is not None
        self._images: dict[tuple[str, int], tuple[bytes, str]] = {}
        self._gradcams: dict[tuple[str, str, int], bytes] = {}
        self._loading = asyncio.Lock()

    async def start(self) -> None:
        """Open the fetcher's connection pool."""
        await self.fetcher.start()

    async def close(self) -> None:
        """Close the fetcher."""
        await self.fetcher.close()

    async def image_bytes(self, listing_id: str, index: int) -> tuple[bytes, str]:
        """An image of a pending listing, fetched through the SSRF-safe fetcher (the browser never fetches it)."""
        key = (listing_id, index)
        if key in self._images:
            return self._images[key]
        item = await self.store.get(listing_id)
        if item is None or not 0 <= index < len(item.images):
            raise ReviewError(404, "no_image", f"{listing_id} has no image {index}")
        result = await self.fetcher.fetch(item.images[index]["url"])
        if result.data is None:
            raise ReviewError(502, "fetch_failed", f"{result.outcome.value}: {result.reason}")
        kind = (result.image_format or "octet-stream").lower()
        answer = (result.data, f"image/{kind}" if result.image_format else "application/octet-stream")
        self._images[key] = answer
        while len(self._images) > IMAGE_CACHE:
            self._images.pop(next(iter(self._images)))
        return answer

    async def gradcam_png(self, listing_id: str, attribute: str, index: int, value: str | None = None) -> bytes:
        """The Grad-CAM overlay of ``attribute`` on the listing's image (the model under review must be loaded)."""
        key = (listing_id, f"{attribute}={value}", index)
        if key in self._gradcams:
            return self._gradcams[key]
        if not self.settings.review.explain:
            raise ReviewError(404, "explain_off", "Grad-CAM is switched off (SWATCH_REVIEW_EXPLAIN=false)")
        item = await self.store.get(listing_id)
        if item is None:
            raise ReviewError(404, "not_pending", f"{listing_id} has no pending review")
        predictor = await self._load_predictor()
        if predictor is None or predictor.model_id != item.model_id:
            loaded = predictor.model_id if predictor else "none"
            raise ReviewError(404, "model_not_loaded", f"model {item.model_id} is not loaded here ({loaded} is)")
        data, _ = await self.image_bytes(listing_id, index)
        png = await asyncio.to_thread(_explain_png, predictor, data, item.group, attribute, value)
        self._gradcams[key] = png
        while len(self._gradcams) > IMAGE_CACHE:
            self._gradcams.pop(next(iter(self._gradcams)))
        return png

    async def _load_predictor(self) -> Predictor | None:
        async with self._loading:  # a second overlay during the first load waits for it
            return await self._load_predictor_once()

    async def _load_predictor_once(self) -> Predictor | None:
        if not self._predictor_loaded:
            self._predictor_loaded = True
            from tagger.predict import Predictor  # torch and Grad-CAM load only when an overlay is asked for

            try:
                self.predictor = await asyncio.to_thread(
                    Predictor.load, self.settings.model.dir, self.settings.model.device
                )
            except (SwatchError, OSError, RuntimeError) as exc:
                logger.warning("no Grad-CAM: the model could not be loaded: %s", exc)
        return self.predictor


def _explain_png(predictor: Predictor, data: bytes, group: str | None, attribute: str, value: str | None) -> bytes:
    try:
        from tagger.explain import explain
    except ModuleNotFoundError as exc:  # grad-cam or matplotlib: installed without the review extra
        raise ReviewError(
            404, "explain_unavailable", f"Grad-CAM needs the review extra (pip install 'swatch[review]'): {exc}"
        ) from exc

    head = f"{group}.{attribute}" if group else attribute
    try:
        [explanation] = explain(predictor, data, [head], group=group, value=value)
    except (TaggerError, ValueError) as exc:
        raise ReviewError(422, "explain_failed", str(exc)) from exc
    out = io.BytesIO()
    explanation.overlay().save(out, "PNG")
    return out.getvalue()
