"""Mixing under the CIRR protocol (suites cirr, shapes; harness/evaluation/protocols/cirr.py):
R@K over the gallery and Rsubset@K within the image set, the reference removed.
The gallery ranks come from the retrieval core, the image-set ranks from the three
parts' scores against the other members combined by the same formula."""

from __future__ import annotations

import torch

import coir_kernels
from harness.evaluation.metrics import (
    CIRR_METRICS,
    QueryLabels,
    build_labels,
    means,
    query_values_from_counts,
    subset_scores_of,
)
from harness.evaluation.protocols.base import ScoringRules
from harness.mixing.adapters.base import MIXERS, mixed_counts, unmerged


def image_set_counts(part, labels: QueryLabels, weights: torch.Tensor):
    """(greater, equal, positive scores) (W, Q, P) within each query's image set, for
    every triple: Q x M x 3 dot products, the triples formed from them."""
    blocks = []
    for p in part.parts:
        scores, valid = subset_scores_of(p, part.gallery, labels)
        blocks.append(scores)
    subset_scores = torch.einsum("wk,kqm->wqm", weights.float(), torch.stack(blocks).float())
    w, q = weights.shape[0], labels.positives.shape[0]
    counts = coir_kernels.reference.rank_counts_dense(
        subset_scores.reshape(w * q, subset_scores.shape[-1]),
        valid.repeat(w, 1),
        labels.member_positives.repeat(w, 1),
    )
    return tuple(c.reshape(w, q, c.shape[-1]) for c in counts)


class CirrMixer:
    name = "cirr"
    panels = ("R@1", "R@5", "Avg")
    merge = staticmethod(unmerged)

    def metrics(self, part) -> list[str]:
        return list(CIRR_METRICS)

    def labels(self, part) -> QueryLabels:
        return build_labels(part.data.queries, {g: i for i, g in enumerate(part.gallery_ids)})

    def sweep(self, part, weights: torch.Tensor, rules: ScoringRules):
        """Every CIRR metric of every triple ({metric: [W]}, as the protocol's
        `evaluate`) and each query's values ({metric: (W, Q)}, as its `query_values`)."""
        labels = self.labels(part)
        gallery_counts = mixed_counts(part.parts, part.gallery, weights, labels.positives, labels.reference)
        values = query_values_from_counts(gallery_counts, image_set_counts(part, labels, weights), labels,
                                          rules.convention, rules.tie_rule)
        return means(values), values


MIXERS.register("cirr")(CirrMixer())
