"""The final ranking of a two-stage run, as the protocol scores it.

Each query's final ranking is its first-stage top K ordered by the second stage,
followed by every other item in first-stage order. The protocol reads it as a score
matrix through the identity gallery (harness/similarity/dense.py): an item outside the
top K keeps its first-stage score (summed in float64 and rounded once, so its bits do
not depend on the machine), and the top K take the integers TOP + 0, 1, ... in the
order of their second-stage value, equal values sharing one integer; TOP is above
every first-stage score. So the protocol's own metrics, subset ranks, tie rule,
per-query lists and server files read the final ranking unchanged, and two candidates
the re-ranker scores equal are a tie that the run's tie rule places.

The second-stage value is the re-ranker's score, or with fusion
alpha * stage-1 score + (1 - alpha) * sigmoid(re-ranker score), in float64 (SPRC's
validate script weighs its two stages' distances 0.8 / 0.2:
chunmeifeng/SPRC src/validate_blip_rerank.py line 305).
"""

from __future__ import annotations

import math

import torch

from coir_kernels.reference import exact_similarity
from harness.rerank.candidates import Candidates
from harness.similarity.dense import identity_gallery

ALPHAS = tuple(round(0.05 * i, 2) for i in range(21))  # the fusion weights --rerank-fusion tuned tries


def first_stage_matrix(emb) -> torch.Tensor:
    """Every query's first-stage score of every item (Q, G), fp32 from float64 sums."""
    return exact_similarity(emb.composed, emb.gallery)


def second_stage_values(candidates: Candidates, stage2: list[torch.Tensor], alpha: float | None
                        ) -> list[torch.Tensor]:
    """What orders each query's top K: the re-ranker's scores, or the fused value."""
    if alpha is None:
        return stage2
    return [alpha * s1.double() + (1.0 - alpha) * torch.sigmoid(s2.double())
            for s1, s2 in zip(candidates.scores, stage2)]


def final_matrix(stage1: torch.Tensor, candidates: Candidates, values: list[torch.Tensor]) -> torch.Tensor:
    """`stage1` (Q, G) with each query's top K replaced by TOP + its dense rank."""
    top = float(math.floor(stage1.max().item()) + 2) if stage1.numel() else 2.0
    out = stage1.clone()
    for qi, (index, value) in enumerate(zip(candidates.index, values)):
        if len(index) == 0:
            continue
        _, dense_rank = torch.unique(value, sorted=True, return_inverse=True)  # ascending: the best is highest
        out[qi, index] = top + dense_rank.to(out.dtype)
    return out


def final_embeddings(data, emb, stage1: torch.Tensor, candidates: Candidates, values: list[torch.Tensor]):
    """What the protocol scores for the final ranking (composed only, identity gallery)."""
    return identity_gallery(data, emb, final_matrix(stage1, candidates, values), "--rerank")
