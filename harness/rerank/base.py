"""The re-ranker contract, its registry, and what a run asks of the second stage.

A re-ranker is a cross-encoder: it reads the caption with the reference's and one
candidate's vision tokens together and gives that candidate a score (higher ranks
first). It is registered once by name with @register_reranker on a class giving

    check(name, backbone) -> list[str]      what stops it on this backbone (no loading)
    start(name, composer) -> Reranker       from the first stage's own weights (a copy)
    load(name, backbone, checkpoint, seed, device) -> Reranker   from a directory it saved

and the Reranker it returns gives `image_tokens(pixels)`, `scores(reference_tokens,
captions, candidate_tokens)` (one score per row; a reference or caption given once is
used for every row), `trainable_parameters()`, `save(directory)` and `saved_to(directory)`, plus the
composer attributes the training loop reads (model, preprocessing, text lengths).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from harness.core.registry import Registry

NO_FUSION = "none"
TUNED_FUSION = "tuned"


class Reranker(Protocol):
    name: str
    model: torch.nn.Module
    checkpoint_id: str
    checkpoint_sha256: str
    image_size: int
    max_text_len: int
    eval_max_text_len: int
    train_max_text_len: int

    def preprocess(self, image): ...
    def normalize(self, pixels_uint8: torch.Tensor) -> torch.Tensor: ...
    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor: ...
    def scores(self, reference_tokens: torch.Tensor, captions: list[str],
               candidate_tokens: torch.Tensor) -> torch.Tensor: ...
    def trainable_parameters(self) -> list[torch.nn.Parameter]: ...
    def save(self, directory) -> None: ...
    def saved_to(self, directory) -> None: ...  # its weights are now those of `directory`


RERANKERS: Registry[type] = Registry("re-ranker")
register_reranker = RERANKERS.register


@dataclass(frozen=True)
class RerankSettings:
    """What the second stage uses (built by RunConfig.rerank_settings())."""

    reranker: str
    k: int  # candidates per query from the first stage
    checkpoint: str | None  # a directory a re-ranker saved; None: start from the backbone's weights
    fusion: str  # "none" (stage-2 scores alone), "tuned" (alpha on a tuning half) or an alpha in [0, 1]
    train: bool  # fine-tune on the training split's hard negatives first
    negatives: int  # hard negatives per training query, from its first-stage top-K
    epochs: int
    batch_size: int  # training queries per optimizer step (each with 1 + negatives candidates)
    lr: float
    seed: int

    def fusion_alpha(self) -> float | None:
        """The fixed alpha of --rerank-fusion ALPHA; None for "none" and "tuned"."""
        return None if self.fusion in (NO_FUSION, TUNED_FUSION) else float(self.fusion)
