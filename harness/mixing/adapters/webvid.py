"""Mixing under the WebVid-CoVR protocol (harness/evaluation/protocols/webvid.py):
each query ranks the split's target videos, its reference video removed; R@K on
the target (CoVR's convention), no image sets. The table keeps the R@K (meanR3 and
meanR4 are means of them: the sweep computes them too, as the protocol does)."""

from __future__ import annotations

import torch

from harness.evaluation.metrics import build_labels, values_at
from harness.evaluation.protocols.base import ScoringRules
from harness.evaluation.protocols.webvid import RECALL_KS, webvid_values
from harness.evaluation.reference_rule import excluded_items
from harness.mixing.adapters.base import MIXERS, mixed_counts, percents, unmerged, variant_ranks


class WebVidMixer:
    name = "webvid"
    panels = ("R@1", "R@5", "R@10")
    merge = staticmethod(unmerged)

    def metrics(self, part) -> list[str]:
        return [f"R@{k}" for k in RECALL_KS]

    def sweep(self, part, weights: torch.Tensor, rules: ScoringRules):
        queries = part.data.queries
        labels = build_labels(queries, {g: i for i, g in enumerate(part.gallery_ids)},
                              excluded_items(queries, rules.reference))
        counts = mixed_counts(part.parts, part.gallery, weights, labels.positives, labels.reference)
        ranks = variant_ranks(counts, labels.hard, rules.tie_rule)  # CoVR's convention: the target
        stacked = labels.hard.repeat(weights.shape[0], 1)
        shape = counts[0].shape[:-1]
        values = webvid_values({f"R@{k}": values_at(ranks, stacked, k).double().reshape(shape) for k in RECALL_KS})
        metrics = {name: percents(values[name]) for name in (f"R@{k}" for k in RECALL_KS)}
        # the protocol's evaluate: the means of the percentages
        metrics["meanR3"] = [(a + b + c) / 3 for a, b, c in zip(metrics["R@1"], metrics["R@5"], metrics["R@10"])]
        metrics["meanR4"] = [(a + b + c + d) / 4 for a, b, c, d in
                             zip(metrics["R@1"], metrics["R@5"], metrics["R@10"], metrics["R@50"])]
        return metrics, values


MIXERS.register("webvid")(WebVidMixer())
