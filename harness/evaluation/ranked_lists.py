"""Top-K lists in the order the metrics rank: every positive where the tie rule
places it, so that an official evaluator scoring the harness's own list (CIRCO's
compute_metrics over a 50-id list, a CIRR or FashionIQ recall over a top-K) gives
the harness's own figure, exact ties included.

`coir_kernels.topk_excluding` breaks ties by gallery order. Here each positive's place
comes from the rank counts the metrics use (greater, equal, its score) through the
tie rule (harness/evaluation/metrics.py `ranks_with_ties`): `pessimistic` puts it
after every other item of its score (and after positives of a lower label),
`optimistic` before them. The other slots take the remaining items in score order,
ties by gallery order. Positives that tie with the same label keep their column
order. A split without targets has no positives: its lists (the server files) are
in score order with ties by gallery order, the only order that needs no labels.

Items that merely score close to a positive are placed by the bits each
computation gives them, as everywhere in the retrieval core (coir_kernels/__init__.py,
"Ties and copies").
"""

from __future__ import annotations

import torch

from harness.evaluation import shard_scoring
from harness.evaluation.metrics import ranks_with_ties


def tie_ordered_top(query: torch.Tensor, gallery: torch.Tensor, k: int, exclude: torch.Tensor,
                    positives: torch.Tensor, labels: torch.Tensor, tie_rule: str,
                    counts: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                    offset: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, gallery indices), (Q, k) each, best first, `exclude` removed, every
    positive (gallery index in `positives`, -1 pad, with a label > 0 in `labels`) at
    the place the tie rule gives it. `counts`: `coir_kernels.target_rank_counts` of these
    positives, when the caller has them; `offset` (G,): added to each item's score."""
    real = (positives >= 0) & (labels > 0)
    if not bool(real.any()):
        return shard_scoring.topk_excluding(query, gallery, k, exclude, offset=offset)
    greater, equal, pos_scores = counts if counts is not None else shard_scoring.target_rank_counts(
        query, gallery, positives, exclude, offset=offset)
    positions = ranks_with_ties(greater, equal, pos_scores.masked_fill(~real, float("nan")),
                                distinct_labels(labels, real), tie_rule)
    scores, top = shard_scoring.topk_excluding(query, gallery, k + positives.shape[1], exclude, offset=offset)
    k = min(k, top.shape[1])
    rows = zip(real.tolist(), positions.tolist(), pos_scores.tolist(), positives.tolist(), scores.tolist(),
               top.tolist())
    out_scores, out_top = [], []
    for real_i, position_i, score_i, positive_i, scores_i, top_i in rows:
        mine = [(place, (score, item)) for ok, place, score, item in zip(real_i, position_i, score_i, positive_i) if ok]
        placed = {place: entry for place, entry in mine if place < k}
        taken = {item for _, (_, item) in mine}
        others = iter([(s, j) for s, j in zip(scores_i, top_i) if j not in taken])
        row = [placed[slot] if slot in placed else next(others) for slot in range(k)]
        out_scores.append([s for s, _ in row])
        out_top.append([j for _, j in row])
    return torch.tensor(out_scores, dtype=scores.dtype), torch.tensor(out_top, dtype=torch.long)


def distinct_labels(labels: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Labels made distinct within each row, keeping their order (equal labels by column),
    so that tied positives take distinct places; 0 where not `real`."""
    keyed = torch.where(real, labels.double(), torch.zeros_like(labels, dtype=torch.float64))
    order = torch.sort(keyed, dim=1, stable=True).indices
    ranks = torch.arange(1, labels.shape[1] + 1, dtype=torch.float64).expand_as(keyed).contiguous()
    distinct = torch.empty_like(keyed).scatter_(1, order, ranks)
    return torch.where(real, distinct, torch.zeros_like(distinct))
