"""Backbones: registered by name; importing this package registers them."""

from backbones import blip2, blip_pretrained, blip_tiny, clip_pretrained, clip_tiny  # noqa: E402,F401  (registration)
from backbones.base import BACKBONES, Backbone, LoadOptions, register_backbone
from backbones.blip2_files import FILE_KINDS as _BLIP2_FILES
from backbones.blip_pretrained import FILE_KINDS as _BLIP_FILES

# Every original-checkpoint format a backbone reads, by name (--checkpoint-format).
CHECKPOINT_FORMATS = tuple(dict.fromkeys([*_BLIP_FILES.values(), *_BLIP2_FILES.values()]))

__all__ = ["BACKBONES", "CHECKPOINT_FORMATS", "Backbone", "LoadOptions", "register_backbone"]
