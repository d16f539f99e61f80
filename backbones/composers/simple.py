"""The composers without parameters: the two single-modality baselines and the
sums of image and text features.

- `sum`: normalize(normalize(q) + normalize(t)), the two sides weighted alike, as
  issue 25 states CLIP4Cir's baseline.
- `clip4cir-sum`: CLIP4Cir's element_wise_sum as its code runs it (ABaldrati/CLIP4Cir
  at dfed9f7, src/utils.py:47-54): normalize(q + t) over the *unnormalised* CLIP
  features (src/validate.py:224 encodes the caption, :228-231 takes the reference's
  features from the gallery's, which src/utils.py:41 extracts as `encode_image` gives
  them, and :232 combines them; the gallery is normalised only afterwards, :155; its CLIP
  fine-tuning does the same, src/clip_fine_tune.py:339-345). The features' norms weight
  the sides.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from backbones.composers.base import register_composer
from harness.core.errors import HarnessError


class Fixed:
    """A rule without parameters: nothing to train, nothing to save."""

    prompt = None
    trains_on = None
    module = None

    def __init__(self, embed_dim: int, **recorded):
        self.embed_dim = embed_dim
        if recorded and recorded != self.config():
            raise HarnessError(f"composer {self.name!r} was saved as {recorded}; this version is {self.config()}")

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
        """normalize(q) + normalize(t); the backbone normalises the query."""
        text = clip.text_features(texts).float()
        return F.normalize(image_features.float(), dim=-1) + F.normalize(text, dim=-1)


@register_composer("clip4cir-sum")
class Clip4CirSum(Fixed):
    name = "clip4cir-sum"

    def compose(self, clip, image_features: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """q + t over the unnormalised features; the backbone normalises the query."""
        return image_features.float() + clip.text_features(texts).float()
