"""Embedding the training pairs: the composed query of each (reference, caption) and
its target, one chunk of a batch at a time, with what a frozen vision side allows
(target embeddings cached once, the reference's ViT pass without a graph)."""

from __future__ import annotations

import contextlib

import torch

from harness.core.precision import autocast
from harness.suites.image_store import ImageStore


def frozen_sides(backbone, store: ImageStore, image_id: str, device) -> tuple[bool, bool]:
    """(image tokens frozen, target embedding frozen), probed with a graph on one image."""
    pixels = backbone.normalize(store.batch([image_id]).to(device))
    with torch.enable_grad():
        tokens = backbone.image_tokens(pixels)
        target = backbone.image_embedding_from_tokens(tokens)
    return not tokens.requires_grad, not target.requires_grad


def forward_context(precision: str, device, param_dtype):
    """Autocast for fp32 weights; weights already in fp16/bf16 (DeepSpeed) run as they are."""
    return autocast(precision, device) if param_dtype == torch.float32 else contextlib.nullcontext()


def cache_targets(backbone, store: ImageStore, image_ids: list[str], device, precision: str,
                  param_dtype, batch_size: int) -> dict[str, torch.Tensor]:
    """Target embeddings of a frozen vision side, once, in eval mode (as evaluation computes them)."""
    was_training = backbone.model.training
    backbone.model.eval()
    rows = {}
    try:
        with torch.no_grad(), forward_context(precision, device, param_dtype):
            for s in range(0, len(image_ids), batch_size):
                ids = image_ids[s : s + batch_size]
                pixels = backbone.normalize(store.batch(ids).to(device)).to(param_dtype)
                for image_id, emb in zip(ids, backbone.encode_image(pixels).float()):
                    rows[image_id] = emb
    finally:
        backbone.model.train(was_training)
    return rows


class PairEmbedder:
    """`for_batch(batch)(start, end)` -> (queries, targets) of batch[start:end], fp32.

    With a frozen ViT, gradient caching's first (no-graph) pass keeps each chunk's
    tokens for its second pass: one ViT pass per image, at the cost of holding the
    batch's tokens (no graph) for the step."""

    def __init__(self, backbone, store: ImageStore, device, precision: str, param_dtype,
                 tokens_frozen: bool, target_rows: dict[str, torch.Tensor] | None):
        self.backbone, self.store, self.device = backbone, store, device
        self.precision, self.param_dtype = precision, param_dtype
        self.tokens_frozen, self.target_rows = tokens_frozen, target_rows

    def for_batch(self, batch):
        kept_tokens: dict[tuple[int, int], torch.Tensor] = {}

        def run(start: int, end: int):
            rows = batch[start:end]
            pixels = self._pixels([q.reference for q in rows])
            with forward_context(self.precision, self.device, self.param_dtype):
                tokens = self._tokens(pixels, kept_tokens, (start, end))
                query = self.backbone.query_embedding_from_tokens(tokens, [q.caption for q in rows]).float()
                if self.target_rows is not None:
                    target = torch.stack([self.target_rows[q.target] for q in rows])
                else:
                    target = self.backbone.encode_image(self._pixels([q.target for q in rows])).float()
            return query, target

        return run

    def _pixels(self, image_ids):
        return self.backbone.normalize(self.store.batch(image_ids).to(self.device)).to(self.param_dtype)

    def _tokens(self, pixels, kept_tokens: dict, key: tuple[int, int]) -> torch.Tensor:
        if not self.tokens_frozen:
            return self.backbone.image_tokens(pixels)
        return frozen_tokens(self.backbone, pixels, kept_tokens, key)


def frozen_tokens(backbone, pixels: torch.Tensor, kept_tokens: dict, key) -> torch.Tensor:
    """A frozen ViT's tokens of `pixels`, without a graph: computed in gradient
    caching's first (no-graph) pass and kept under `key` for its second."""
    tokens = kept_tokens.pop(key, None)
    if tokens is None:
        with torch.no_grad():
            tokens = backbone.image_tokens(pixels)
        if not torch.is_grad_enabled():
            kept_tokens[key] = tokens
    return tokens
