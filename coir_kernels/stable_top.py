"""The first k of each row's stable descending sort, as the reference top-K returns
them (ties by lower index), without sorting whole rows: a full stable sort of a
4,181 x 2,297 score matrix costs several times the product that made it."""

from __future__ import annotations

import torch


def stable_top(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first k of each row's stable descending sort (ties by lower index), without
    sorting the row: a row whose k-th best value is not tied beyond the first k has
    exactly k items at or above it, taken in index order and sorted among themselves;
    the rows with a tie across the cut take the full stable sort."""
    values = torch.empty(scores.shape[0], k, dtype=scores.dtype, device=scores.device)
    indices = torch.empty(scores.shape[0], k, dtype=torch.long, device=scores.device)
    if k == 0:
        return values, indices
    above = scores >= scores.topk(k, dim=1).values[:, -1:]
    plain = above.sum(1) == k
    rows = torch.nonzero(plain).squeeze(1)
    if len(rows):
        chosen = torch.nonzero(above[rows])[:, 1].view(len(rows), k)  # index order
        chosen_scores = scores[rows].gather(1, chosen)
        order = torch.sort(chosen_scores, dim=1, descending=True, stable=True).indices
        values[rows], indices[rows] = chosen_scores.gather(1, order), chosen.gather(1, order)
    rows = torch.nonzero(~plain).squeeze(1)
    if len(rows):
        v, i = torch.sort(scores[rows], dim=1, descending=True, stable=True)
        values[rows], indices[rows] = v[:, :k], i[:, :k]
    return values, indices
