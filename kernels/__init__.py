"""The retrieval core: one public function per operation.

Each function dispatches to an implementation: `reference` (chunked torch, any
device) today; Triton kernels register here as they land. The harness scores and
ranks only through these functions.
"""

from __future__ import annotations

import os

import torch

from kernels import reference

IMPLEMENTATIONS = ("reference",)


def _pick(impl: str | None) -> str:
    choice = impl or os.environ.get("COIR_KERNELS", "auto")
    if choice == "auto":
        return "reference"
    if choice not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown kernel implementation {choice!r}; choose from auto, "
            + ", ".join(IMPLEMENTATIONS)
        )
    return choice


def target_rank_counts(
    query: torch.Tensor,
    gallery: torch.Tensor,
    positives: torch.Tensor,
    exclude: torch.Tensor,
    impl: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each query and each of its positives (gallery indices, -1 pad): how many
    gallery items score strictly higher, how many score the same, and the
    positive's score; `exclude` (one index per query, -1 for none) takes no part."""
    _check_pair(query, gallery)
    _pick(impl)
    return reference.target_rank_counts(query, gallery, positives, exclude)


def topk_excluding(
    query: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    exclude: torch.Tensor,
    impl: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (scores, gallery indices) per query, best first, `exclude` removed;
    ties broken by gallery order."""
    _check_pair(query, gallery)
    _pick(impl)
    return reference.topk_excluding(query, gallery, k, exclude)


def _check_pair(query: torch.Tensor, gallery: torch.Tensor) -> None:
    shapes_ok = query.ndim in (2, 3) and gallery.ndim in (2, 3)
    if not shapes_ok or query.shape[-1] != gallery.shape[-1]:
        raise ValueError(
            f"query {tuple(query.shape)} and gallery {tuple(gallery.shape)} must be "
            "(Q, D) or (Q, T, D) and (G, D) or (G, T, D) with the same D"
        )
    if gallery.shape[0] == 0:
        raise ValueError("the gallery is empty")
