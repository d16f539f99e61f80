"""BLIP image preprocessing without torchvision: bicubic resize to a square, then
normalisation with the CLIP mean and std that BLIP and BLIP-2 use."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImagePreprocess:
    size: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def to_uint8(self, image: Image.Image) -> np.ndarray:
        """Resized RGB as uint8 (size, size, 3): the compact form that caches keep."""
        image = image.convert("RGB")
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.Resampling.BICUBIC)
        return np.asarray(image, dtype=np.uint8)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> float (N, 3, H, W), scaled to [0, 1] and standardised."""
        x = pixels.permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def describe(self) -> dict:
        return {"size": self.size, "resize": "bicubic", "mean": self.mean, "std": self.std}
