"""Images of a split as preprocessed uint8 tensors, fetched by id in batches.

Small splits (shapes, tiny models) are decoded once and kept in memory, since
training revisits every image each epoch; a split whose uint8 copy would exceed
`preload_limit_bytes` is read from disk batch by batch instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from harness.core.progress import progress
from harness.suites.base import SplitData

PRELOAD_LIMIT_BYTES = 2 << 30


class ImageStore:
    """`preprocess` turns an RGB image into the model's uint8 (size, size, 3) input
    (a backbone's `preprocess`, with `image_size` its side)."""

    def __init__(
        self,
        data: SplitData,
        preprocess: Callable[[Image.Image], np.ndarray],
        image_size: int,
        image_ids: Sequence[str],
        preload_limit_bytes: int = PRELOAD_LIMIT_BYTES,
    ):
        self.data = data
        self.preprocess = preprocess
        self.image_size = image_size
        self.row = {image_id: i for i, image_id in enumerate(dict.fromkeys(image_ids))}
        size = image_size
        self.preloaded: torch.Tensor | None = None
        if len(self.row) * size * size * 3 <= preload_limit_bytes:
            self.preloaded = self._decode(list(self.row), desc=f"loading {data.split} images")

    def _decode(self, image_ids: Sequence[str], desc: str | None = None) -> torch.Tensor:
        size = self.image_size
        out = np.empty((len(image_ids), size, size, 3), dtype=np.uint8)
        ids = progress(image_ids, desc=desc, unit="img") if desc else image_ids
        for i, image_id in enumerate(ids):
            out[i] = self.preprocess(self.data.load_image(image_id))
        return torch.from_numpy(out)

    def batch(self, image_ids: Sequence[str]) -> torch.Tensor:
        """uint8 (B, H, W, 3) for the given ids, in order."""
        if self.preloaded is not None:
            return self.preloaded[[self.row[i] for i in image_ids]]
        return self._decode(image_ids)
