"""Backbones: registered by name; importing this package registers them."""

from backbones import blip2, blip_pretrained, blip_tiny  # noqa: E402,F401  (registration)
from backbones.base import BACKBONES, Backbone, LoadOptions, register_backbone

__all__ = ["BACKBONES", "Backbone", "LoadOptions", "register_backbone"]
