"""Every CIRR metric of every weight triple of a sweep, from rank counts: the gallery
ranks from the retrieval core (`kernels.mixed_rank_counts`), the image-set ranks from
the three parts' scores against the other members."""

from __future__ import annotations

import torch

import kernels
from harness.evaluation.metrics import (
    CIRR_METRICS,
    cirr_query_values,
    means,
    metrics_from_counts,
    subset_scores_of,
)
from harness.mixing.parts import Part

SWEEP_CHUNK = 512  # weight triples per call (memory: chunk x queries x members); 231 in one


def mixed_counts(part: Part, weights: torch.Tensor):
    """(gallery counts, subset counts), each (greater, equal, positive scores) of shape
    (W, Q, P), for the mixed queries of every weight triple: the gallery ranks from the
    retrieval core, the image-set ranks from the three parts' scores against the five
    other members, combined by the same formula (Q x M x 3 dot products)."""
    labels = part.labels
    gallery_counts = kernels.mixed_rank_counts(part.parts, part.gallery, weights, labels.positives,
                                               labels.reference)
    blocks = []
    for p in part.parts:
        scores, valid = subset_scores_of(p, part.gallery, labels)
        blocks.append(scores)
    subset_scores = torch.einsum("wk,kqm->wqm", weights.float(), torch.stack(blocks))
    w, q = weights.shape[0], labels.positives.shape[0]
    counts = kernels.reference.rank_counts_dense(
        subset_scores.reshape(w * q, subset_scores.shape[-1]),
        valid.repeat(w, 1),
        labels.member_positives.repeat(w, 1),
    )
    subset_counts = tuple(c.reshape(w, q, c.shape[-1]) for c in counts)
    return gallery_counts, subset_counts


def sweep_metrics(part: Part, weights: torch.Tensor, convention: str, tie_rule: str,
                  chunk: int = SWEEP_CHUNK) -> dict[str, list[float]]:
    """Every CIRR metric for every weight triple: {metric: [value per triple]}."""
    out: dict[str, list[float]] = {m: [] for m in CIRR_METRICS}
    for start in range(0, weights.shape[0], chunk):
        gallery_counts, subset_counts = mixed_counts(part, weights[start : start + chunk])
        values = metrics_from_counts(gallery_counts, subset_counts, part.labels, convention, tie_rule)
        for name in CIRR_METRICS:
            out[name] += values[name]
    return out


def direct_values(part: Part, query: torch.Tensor, convention: str, tie_rule: str) -> dict[str, torch.Tensor]:
    """Each query's value of every CIRR metric for one set of mixed queries."""
    return cirr_query_values(query, part.gallery, part.labels, convention, tie_rule)


def direct_metrics(part: Part, query: torch.Tensor, convention: str, tie_rule: str) -> dict[str, float]:
    return {name: v[0] for name, v in means(direct_values(part, query, convention, tie_rule)).items()}
