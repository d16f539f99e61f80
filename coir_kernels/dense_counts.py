"""Rank counts inside a score matrix that is already whole: CIRR's image-set subsets
(a handful of candidates per query, plain or mixed scores). Gallery-sized rankings
stream their scores instead (`coir_kernels/reference.py`, which re-exports this as
`coir_kernels.reference.rank_counts_dense`, the name the harness calls).
"""

from __future__ import annotations

import torch


def rank_counts_dense(
    scores: torch.Tensor, valid: torch.Tensor, positives: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank statistics of chosen candidates inside each row of a score matrix.

    scores (Q, C), valid (Q, C) bool (candidates that take part in the ranking),
    positives (Q, P) long candidate indices, -1 for padding; each must be a valid
    candidate (the caller removes excluded items from the positives).
    Returns (greater, equal, positive_scores), each (Q, P): the valid candidates scoring
    strictly above the positive, those other than the positive scoring exactly the
    same, and the positive's own score (nan for padding).
    """
    pad = positives < 0
    if scores.shape[1] == 0:  # no candidates (a suite without image sets): every positive is padding
        return torch.zeros_like(positives), torch.zeros_like(positives), torch.full(positives.shape, float("nan"))
    index = positives.clamp(min=0)
    pos_scores = scores.gather(1, index)
    masked = scores.masked_fill(~valid, float("nan"))  # nan compares False both ways
    greater = torch.empty_like(positives)
    equal = torch.empty_like(positives)
    for p in range(positives.shape[1]):  # P is small (a few soft targets)
        column = pos_scores[:, p : p + 1]
        greater[:, p] = (masked > column).sum(1)
        is_valid_self = valid.gather(1, index[:, p : p + 1]).squeeze(1)
        equal[:, p] = (masked == column).sum(1) - is_valid_self.long()
    greater = greater.masked_fill(pad, 0)
    equal = equal.masked_fill(pad, 0)
    return greater, equal, pos_scores.masked_fill(pad, float("nan"))
