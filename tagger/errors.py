"""The root of Swatch's exception tree.

It lives in ``tagger`` because ``tagger`` must not import ``streams``, while ``streams`` may use
``tagger``: both packages derive their errors from :class:`SwatchError`, so a caller can catch
everything Swatch raises on purpose with one ``except``.
"""

from __future__ import annotations


class SwatchError(Exception):
    """Base class of every error Swatch raises on purpose."""


class TaggerError(SwatchError):
    """Base class of the model side's errors (taxonomy, images, model directories)."""
