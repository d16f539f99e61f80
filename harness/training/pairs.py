"""Embedding the training pairs: the composed query of each (reference, caption) and
its target, one chunk of a batch at a time, with what a frozen vision side allows
(target embeddings cached once, the reference's ViT pass without a graph)."""

from __future__ import annotations

import contextlib

import torch

from harness.core.precision import autocast, image_tokens
from harness.suites.base import frames_of, pool_frames
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


def vision(backbone, precision: str, device, param_dtype):
    """pixels -> the vision tower's tokens, under the precision's image autocast for
    fp32 weights (weights in fp16/bf16 run as they are)."""
    if param_dtype != torch.float32:
        return backbone.image_tokens
    return lambda pixels: image_tokens(backbone, pixels, precision, device)


def cache_targets(backbone, store: ImageStore, target_ids: list[str], frames: dict, device, precision: str,
                  param_dtype, batch_size: int) -> dict[str, torch.Tensor]:
    """Target embeddings of a frozen vision side, once, in eval mode (as evaluation
    computes them; a video's from its pooled frames)."""
    was_training = backbone.model.training
    backbone.model.eval()
    image_ids = list(dict.fromkeys(i for t in target_ids for i in frames_of(frames, t)[0]))
    rows = {}
    try:
        tokens_of = vision(backbone, precision, device, param_dtype)
        with torch.no_grad():
            for s in range(0, len(image_ids), batch_size):
                ids = image_ids[s : s + batch_size]
                tokens = tokens_of(backbone.normalize(store.batch(ids).to(device)).to(param_dtype))
                with forward_context(precision, device, param_dtype):
                    embeddings = backbone.image_embedding_from_tokens(tokens).float()
                for image_id, emb in zip(ids, embeddings):
                    rows[image_id] = emb
    finally:
        backbone.model.train(was_training)
    return {t: target_embedding(torch.stack([rows[i] for i in frames_of(frames, t)[0]]), t, frames)
            for t in target_ids}


def target_embedding(embeddings: torch.Tensor, item: str, frames: dict) -> torch.Tensor:
    """A target's embedding from its images' (F, ...): a video's pooled frames, an image's own."""
    return pool_frames(embeddings, frames_of(frames, item)[1]) if item in frames else embeddings[0]


class PairEmbedder:
    """`for_batch(batch)(start, end)` -> (queries, targets) of batch[start:end], fp32.

    With a frozen ViT, gradient caching's first (no-graph) pass keeps each chunk's
    tokens for its second pass: one ViT pass per image, at the cost of holding the
    batch's tokens (no graph) for the step."""

    def __init__(self, backbone, store: ImageStore, frames: dict, device, precision: str, param_dtype,
                 tokens_frozen: bool, target_rows: dict[str, torch.Tensor] | None):
        self.backbone, self.store, self.frames, self.device = backbone, store, frames, device
        self.precision, self.param_dtype = precision, param_dtype
        self.tokens_frozen, self.target_rows = tokens_frozen, target_rows
        self.vision = vision(backbone, precision, device, param_dtype)

    def for_batch(self, batch):
        kept_tokens: dict[tuple[int, int], torch.Tensor] = {}

        def run(start: int, end: int):
            rows = batch[start:end]
            pooled = self.backbone.pooled_for_loss  # BLIP-2: token means (CoVR-2)
            if not (self.tokens_frozen or self.frames or self.target_rows is not None):
                return self.one_vision_pass(rows, pooled)
            tokens = self._tokens(self._pixels([q.reference for q in rows]), kept_tokens, (start, end))
            with forward_context(self.precision, self.device, self.param_dtype):
                query = pooled(self.backbone.query_embedding_from_tokens(tokens, [q.caption for q in rows]).float())
            if self.target_rows is not None:
                return query, pooled(torch.stack([self.target_rows[q.target] for q in rows]))
            images = [frames_of(self.frames, q.target)[0] for q in rows]
            target_tokens = self.vision(self._pixels([i for ids in images for i in ids]))
            with forward_context(self.precision, self.device, self.param_dtype):
                embeddings = self.backbone.image_embedding_from_tokens(target_tokens).float()
            if self.frames:  # videos: each target's frames pooled
                embeddings = torch.stack([target_embedding(e, q.target, self.frames)
                                          for e, q in zip(embeddings.split([len(ids) for ids in images]), rows)])
            return query, pooled(embeddings)

        return run

    def one_vision_pass(self, rows, pooled):
        """Images with a trained vision tower: references and targets in one pass,
        twice the rows per GEMM and half the passes (a small model's step is dominated
        by per-operation costs)."""
        both = self.vision(self._pixels([q.reference for q in rows] + [q.target for q in rows]))
        tokens, target_tokens = both[: len(rows)], both[len(rows):]
        with forward_context(self.precision, self.device, self.param_dtype):
            query = self.backbone.query_embedding_from_tokens(tokens, [q.caption for q in rows]).float()
            target = self.backbone.image_embedding_from_tokens(target_tokens).float()
        return pooled(query), pooled(target)

    def _pixels(self, image_ids):
        return self.backbone.normalize(self.store.batch(image_ids).to(self.device)).to(self.param_dtype)

    def _tokens(self, pixels, kept_tokens: dict, key: tuple[int, int]) -> torch.Tensor:
        if not self.tokens_frozen:
            return self.vision(pixels)
        return frozen_tokens(self.vision, pixels, kept_tokens, key)


def frozen_tokens(vision_tower, pixels: torch.Tensor, kept_tokens: dict, key) -> torch.Tensor:
    """A frozen ViT's tokens of `pixels` (`vision_tower(pixels)`), without a graph:
    computed in gradient caching's first (no-graph) pass and kept under `key` for
    its second."""
    tokens = kept_tokens.pop(key, None)
    if tokens is None:
        with torch.no_grad():
            tokens = vision_tower(pixels)
        if not torch.is_grad_enabled():
            kept_tokens[key] = tokens
    return tokens
