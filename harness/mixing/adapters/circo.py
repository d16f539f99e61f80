"""Mixing under the CIRCO protocol (harness/evaluation/protocols/circo.py): mAP@K
over every ground truth and Recall@K on the annotated target, the reference
removed, from the rank counts of every ground truth of every triple, (W, Q, P)
with P the ground truths (harness/evaluation/average_precision.py)."""

from __future__ import annotations

import torch

from harness.evaluation.average_precision import (
    MAP_KS,
    RECALL_KS,
    average_precision_at,
    ground_truth_positions,
)
from harness.evaluation.protocols.base import ScoringRules
from harness.evaluation.protocols.circo import ground_truth_labels
from harness.mixing.adapters.base import MIXERS, flat, mixed_counts, percents, unmerged


class CircoMixer:
    name = "circo"
    panels = ("mAP@5", "mAP@10", "mAP@50")
    merge = staticmethod(unmerged)

    def metrics(self, part) -> list[str]:
        return [f"mAP@{k}" for k in MAP_KS] + [f"R@{k}" for k in RECALL_KS]

    def sweep(self, part, weights: torch.Tensor, rules: ScoringRules):
        """({metric: [W]}, {metric: (W, Q)}) as the protocol's `map_metrics` and
        `map_query_values` give them for each triple's mixed query."""
        positives, counts, exclude = ground_truth_labels(part.data, part.gallery_ids, rules.reference)
        ranked = mixed_counts(part.parts, part.gallery, weights, positives, exclude)
        variants, shape = weights.shape[0], ranked[0].shape[:-1]
        positions = ground_truth_positions(*flat(ranked), rules.tie_rule)
        stacked = counts.repeat(variants)
        values = {f"mAP@{k}": average_precision_at(positions, stacked, k).reshape(shape) for k in MAP_KS}
        target = positions[:, 0]
        values.update({f"R@{k}": (target < k).double().reshape(shape) for k in RECALL_KS})
        return {name: percents(v) for name, v in values.items()}, values


MIXERS.register("circo")(CircoMixer())
