"""Mixing under the GeneCIS protocol (harness/evaluation/protocols/genecis.py): every
triple's mixed query ranked within each template's own gallery, from one pass of the
retrieval core's candidate counts (`coir_kernels.candidate_mixed_rank_counts`, the
gallery `lifted` as the EgoCVR adapter does), then each task's hits and per-query
shares and their average, as the protocol computes them. The reference rule is the
protocol's own (`keep` by default), so this adapter takes both."""

from __future__ import annotations

import torch

from harness.evaluation import candidate_galleries as cg
from harness.evaluation.protocols.base import ScoringRules
from harness.evaluation.protocols.genecis import (
    MIN_GALLERY,
    RECALL_KS,
    SETTING,
    metric_names,
    task_masks,
    task_metrics,
    task_values,
    tasks_of,
)
from harness.mixing.adapters.base import MIXERS, candidate_hits, unmerged


class GeneCISMixer:
    name = "genecis"
    panels = ("avg R@1", "avg R@2", "avg R@3")
    merge = staticmethod(unmerged)
    reference_rules = ("keep", "remove")  # the rules its sweep scores (harness/mixing/modes.py check)

    def metrics(self, part) -> list[str]:
        return metric_names(tasks_of(part.data))

    def sweep(self, part, weights: torch.Tensor, rules: ScoringRules):
        """({metric: [W]}, {metric: (W, Q)}) as the protocol's `evaluate` and
        `query_values` give them for each triple's mixed query."""
        setting = cg.setting_labels(part.data, SETTING, rules.reference, MIN_GALLERY)
        per_triple = candidate_hits(part, weights, setting, rules.tie_rule, RECALL_KS)
        masks = task_masks(part.data, setting.kept)
        per_variant = [task_metrics({k: per_triple[k][w] for k in RECALL_KS}, masks) for w in range(weights.shape[0])]
        metrics = {name: [row[name] for row in per_variant] for name in per_variant[0]}
        values = task_values(per_triple, masks)
        return metrics, values


MIXERS.register("genecis")(GeneCISMixer())
