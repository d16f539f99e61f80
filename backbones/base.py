"""The Backbone contract and its registry.

A backbone turns images and modification texts into L2-normalised embeddings:

    encode_image(pixels)          -> (N, D)  gallery / target embedding
    encode_text(texts)            -> (N, D)  text-only embedding (a baseline)
    encode_query(pixels, texts)   -> (N, D)  composed query f(q, t)
    preprocess(pil_image)         -> uint8 (H, W, 3) array, resized;
    normalize(uint8 batch)        -> float pixels (N, 3, H, W) for the model

Each is registered once by name with @register_backbone on a class giving
`check(options) -> list[str]` (what is missing, found without loading or
downloading anything, so a run fails in seconds) and
`load(options, device) -> Backbone`; `LoadOptions.checkpoint` is a local
transformers directory, a hub id, an original checkpoint file, or None for the
backbone's default. `image_tokens` / `*_from_tokens` split the
vision pass from the rest so that each image is encoded once per evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from harness.core.registry import Registry


class Backbone(Protocol):
    name: str
    image_size: int
    embed_dim: int
    checkpoint_id: str  # what was loaded (path or hub id), for results
    checkpoint_sha256: str  # its content hash, for results and cache keys

    def preprocess(self, image: Image.Image) -> np.ndarray: ...
    def normalize(self, pixels_uint8: torch.Tensor) -> torch.Tensor: ...
    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor: ...
    def image_embedding_from_tokens(self, tokens: torch.Tensor) -> torch.Tensor: ...
    def query_embedding_from_tokens(self, tokens: torch.Tensor, texts: list[str]) -> torch.Tensor: ...
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor: ...
    def encode_text(self, texts: list[str]) -> torch.Tensor: ...
    def encode_query(self, pixels: torch.Tensor, texts: list[str]) -> torch.Tensor: ...
    def trainable_parameters(self, train_vision: bool) -> list[torch.nn.Parameter]: ...
    def save(self, directory) -> None: ...


@dataclass(frozen=True)
class LoadOptions:
    checkpoint: str | None = None
    # Format of a checkpoint file, by name; None: by the documented file kind
    # (.pth: the backbone's original format, .ckpt: CoVR). Directories are transformers'.
    checkpoint_format: str | None = None
    tokenizer: str | None = None  # directory or hub id, for weight-only original files
    model_config: str | None = None  # config.json overriding an original file's architecture
    seed: int = 0  # for randomly initialised weights
    composer: str | None = None  # CLIP backbones: the composed query's rule (backbones/composers/); None: sum


class BackboneEntry(Protocol):
    @classmethod
    def check(cls, options: LoadOptions) -> list[str]: ...

    @classmethod
    def load(cls, options: LoadOptions, device: torch.device) -> Backbone: ...


BACKBONES: Registry[type] = Registry("backbone")
register_backbone = BACKBONES.register
