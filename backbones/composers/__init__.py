"""Composers: how a backbone without a fusion encoder (CLIP) turns a reference
image and a modification text into one query, registered by name
(`--composer`); importing this package registers them."""

from backbones.composers import combiner, pic2word, simple  # noqa: F401  (registration)
from backbones.composers.base import COMPOSERS, DEFAULT_COMPOSER, Composer, register_composer

__all__ = ["COMPOSERS", "DEFAULT_COMPOSER", "Composer", "register_composer"]
