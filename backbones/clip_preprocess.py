"""CLIP's image preprocessing without torchvision: the shortest edge resized
(bicubic) to the crop size, a centre crop, then CLIP's mean and std.

This is OpenAI CLIP's `_transform` (openai/CLIP clip/clip.py: Resize(n_px, BICUBIC),
CenterCrop(n_px), Normalize): the longer edge becomes int(n_px * long / short), and
the crop's offset rounds half the excess (torchvision's CenterCrop). Pic2Word, SEARLE
and CLIP4Cir's "clip" preprocessing start from it. A checkpoint's
preprocessor_config.json (transformers' CLIPImageProcessor) gives the sizes, mean and std.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from backbones.preprocess import CLIP_MEAN, CLIP_STD, ImagePreprocess


@dataclass(frozen=True)
class ClipPreprocess(ImagePreprocess):
    resize_to: int = 0  # the shortest edge's length before the crop; 0: the crop size

    def to_uint8(self, image: Image.Image) -> np.ndarray:
        image = image.convert("RGB")
        short = self.resize_to or self.size
        width, height = image.size
        if min(width, height) != short:
            # torchvision's Resize (and transformers' CLIPImageProcessor): the long edge is
            # int(short * long / min), in this order; int(long * (short / min)) can land
            # one pixel short (a 55 px square gives 223 for 224) and crop a black row in.
            long = int(short * max(width, height) / min(width, height))
            size = (short, long) if width <= height else (long, short)
            image = image.resize(size, Image.Resampling.BICUBIC)
        width, height = image.size
        left = int(round((width - self.size) / 2.0))
        top = int(round((height - self.size) / 2.0))
        if (width, height) != (self.size, self.size):
            image = image.crop((left, top, left + self.size, top + self.size))
        return np.asarray(image, dtype=np.uint8)

    def describe(self) -> dict:
        return {"size": self.size, "resize": "bicubic", "crop": "shortest edge to "
                f"{self.resize_to or self.size}, centre crop", "mean": self.mean, "std": self.std}


def _edge(value) -> int:
    if isinstance(value, dict):
        return int(value.get("shortest_edge") or value.get("height"))
    return int(value)


def from_processor_config(directory: str | Path | None, image_size: int) -> ClipPreprocess:
    """The preprocessing a checkpoint's preprocessor_config.json states; without one,
    OpenAI CLIP's at the vision tower's image size."""
    path = Path(directory) / "preprocessor_config.json" if directory else None
    if path is None or not path.is_file():
        return ClipPreprocess(image_size)
    config = json.loads(path.read_text())
    crop = _edge(config.get("crop_size", image_size))
    return ClipPreprocess(crop, tuple(config.get("image_mean", CLIP_MEAN)), tuple(config.get("image_std", CLIP_STD)),
                          resize_to=_edge(config.get("size", crop)))


__all__ = ["ClipPreprocess", "from_processor_config"]
