"""The composers without parameters: the two single-modality baselines and
CLIP4Cir's `sum` baseline.

`sum` is CLIP4Cir's element_wise_sum (ABaldrati/CLIP4Cir src/utils.py,
`F.normalize(image_features + text_features, dim=-1)`) over the normalised image and
text features, as the issue states it: normalize(normalize(q) + normalize(t)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from backbones.composers.base import register_composer


class Fixed:
    """A rule without parameters: nothing to train, nothing to save."""

    prompt = None
    trains_on = None
    module = None

    def __init__(self, embed_dim: int):
        self.embed_dim = embed_dim

    def config(self) -> dict:
        return {}


@register_composer("image")
class ImageOnly(Fixed):
    name = "image"

    def compose(self, clip, image_features: torch.Tensor, texts: list[str]) -> torch.Tensor:
        return image_features


@register_composer("text")
class TextOnly(Fixed):
    name = "text"

    def compose(self, clip, image_features: torch.Tensor, texts: list[str]) -> torch.Tensor:
        return clip.text_features(texts)


@register_composer("sum")
class Sum(Fixed):
    name = "sum"

    def compose(self, clip, image_features: torch.Tensor, texts: list[str]) -> torch.Tensor:
        return F.normalize(image_features.float(), dim=-1) + F.normalize(clip.text_features(texts).float(), dim=-1)
