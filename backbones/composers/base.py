"""The Composer contract and its registry.

A composer builds the composed query of a CLIP backbone (backbones/clip.py) from
what CLIP gives: the reference image's projected features and the text encoder.

    compose(clip, image_features, texts) -> (N, D) query, L2-normalised by the backbone
    prompt          the text the text encoder reads, "{caption}" standing for the
                    caption (None: the caption as given); named in the fingerprint
    trains_on       None (nothing to train), "triplets" (a suite's training split)
                    or "images" (images alone, as Pic2Word trains)
    module          its trainable part (None for the fixed rules), saved beside the
                    backbone's weights and loaded back with them

Each is registered once with @register_composer(name) on a class built as
`cls(embed_dim)`, or `cls(embed_dim, **config)` from a saved `config()`. A class
that writes pseudo words into the text encoder's token embeddings sets
`needs_text_width = True` and is built with `width=` the text encoder's hidden size
as well (backbones/clip.py build_composer), which may differ from `embed_dim`.
"""

from __future__ import annotations

from typing import Protocol

import torch

from harness.core.registry import Registry


class Composer(Protocol):
    name: str
    prompt: str | None
    trains_on: str | None
    module: torch.nn.Module | None

    def compose(self, clip, image_features: torch.Tensor, texts: list[str]) -> torch.Tensor: ...
    def config(self) -> dict: ...


DEFAULT_COMPOSER = "sum"  # CLIP4Cir's baseline: what a CLIP backbone composes with unless told
COMPOSERS: Registry[type] = Registry("composer")
register_composer = COMPOSERS.register
