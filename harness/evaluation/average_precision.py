"""mAP@K for queries with several ground truths (CIRCO), and Recall@K on the one
annotated target, from rank counts (coir_kernels.target_rank_counts), never a full sort.

AP@K of one query, as CIRCO defines it (Baldrati et al., ICCV 2023):

    AP@K = 1 / min(N, K) * sum over k <= K of P@k * rel(k)

with N the number of ground truths, rel(k) = 1 if the k-th result is one and P@k
the precision of the first k. Normalising by min(N, K), not by the hits found,
means a query with 2 ground truths both in the first 5 scores AP@5 = 1 only if
they are first and second. mAP@K is the mean over queries, in percent.

Positions come from the rank counts: a ground truth's position is the number of
candidates placed before it (other ground truths included). Ties with other
candidates follow the tie rule (harness.evaluation.metrics.ranks_with_ties); two ground
truths that tie are placed one after the other, so positions are distinct.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from harness.evaluation import shard_scoring
from harness.evaluation.metrics import percent, ranks_with_ties

MAP_KS = (5, 10, 25, 50)
RECALL_KS = (5, 10, 25, 50)


def ground_truth_positions(
    greater: torch.Tensor, equal: torch.Tensor, pos_scores: torch.Tensor, tie_rule: str
) -> torch.Tensor:
    """0-based position of each ground truth in its query's ranking, (Q, P); padding
    (nan score) gets the largest int64, past every cut-off."""
    width = pos_scores.shape[1]
    # Distinct labels settle ties between ground truths; they carry no other meaning.
    order = torch.arange(width, 0, -1, dtype=torch.float32, device=pos_scores.device)
    labels = torch.where(torch.isnan(pos_scores), 0.0, order.expand_as(pos_scores))
    return ranks_with_ties(greater, equal, pos_scores, labels, tie_rule)


def average_precision_at(positions: torch.Tensor, counts: torch.Tensor, k: int) -> torch.Tensor:
    """AP@k per query, (Q,), from distinct ground-truth positions (Q, P) and the number
    of ground truths of each query (Q,), which may exceed the positions given
    (a ground truth that cannot be ranked still counts in min(N, k))."""
    hit = positions < k
    # Ground truths at or before each hit: its rank among the hits, 1-based.
    earlier = (positions[:, None, :] < positions[:, :, None]) & hit[:, None, :]
    found = 1 + earlier.sum(-1)
    place = torch.where(hit, positions, torch.zeros_like(positions)).double() + 1
    precision = torch.where(hit, found.double() / place, torch.zeros_like(place))
    return precision.sum(1) / counts.clamp(min=1, max=k).double()


def map_query_values(
    query_emb: torch.Tensor,
    gallery_emb: torch.Tensor,
    positives: torch.Tensor,
    counts: torch.Tensor,
    exclude: torch.Tensor,
    tie_rule: str = "pessimistic",
    map_ks: Sequence[int] = MAP_KS,
    recall_ks: Sequence[int] = RECALL_KS,
    offset: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Each query's AP@K and target hit within K, (Q,) float64 (see `map_metrics`);
    `offset` (G,): added to each item's score."""
    greater, equal, pos_scores = shard_scoring.target_rank_counts(query_emb, gallery_emb, positives, exclude,
                                                                  offset=offset)
    positions = ground_truth_positions(greater, equal, pos_scores, tie_rule)
    values = {f"mAP@{k}": average_precision_at(positions, counts, k) for k in map_ks}
    target = positions[:, 0] if positions.shape[1] else torch.full((len(positions),), torch.iinfo(torch.long).max)
    values.update({f"R@{k}": (target < k).double() for k in recall_ks})
    return values


def map_metrics(
    query_emb: torch.Tensor,
    gallery_emb: torch.Tensor,
    positives: torch.Tensor,
    counts: torch.Tensor,
    exclude: torch.Tensor,
    tie_rule: str = "pessimistic",
    map_ks: Sequence[int] = MAP_KS,
    recall_ks: Sequence[int] = RECALL_KS,
    offset: torch.Tensor | None = None,
) -> dict[str, float]:
    """mAP@K over every ground truth and R@K on the target, in percent.

    positives (Q, P): gallery indices of each query's ground truths, the annotated
    target in column 0, -1 for padding or a ground truth that cannot be ranked;
    counts (Q,): each query's number of ground truths; exclude (Q,): the gallery
    index removed from each ranking (the reference), -1 for none.
    """
    values = map_query_values(query_emb, gallery_emb, positives, counts, exclude, tie_rule, map_ks, recall_ks,
                              offset)
    return {name: percent(v).item() for name, v in values.items()}
