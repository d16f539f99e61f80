"""Mixing under the GeneCIS protocol (harness/evaluation/protocols/genecis.py): every
triple's mixed query ranked within each template's own gallery, from one pass of the
retrieval core's candidate counts (`coir_kernels.candidate_mixed_rank_counts`, the
gallery `lifted` as the EgoCVR adapter does), then each task's hits and per-query
shares and their average, as the protocol computes them. The reference rule is the
protocol's own (`keep` by default), so this adapter takes both."""

from __future__ import annotations

import torch

import coir_kernels
from harness.evaluation import candidate_galleries as cg
from harness.evaluation.protocols.base import ScoringRules
from harness.evaluation.protocols.genecis import (
    MIN_GALLERY,
    RECALL_KS,
    SETTING,
    metric_names,
    tasks_of,
)
from harness.mixing.adapters.base import MIXERS, flat, lifted, unmerged


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
        extended = tuple(torch.cat([p.float(), p.new_zeros(p.shape[0], 1, dtype=torch.float32)], dim=1)
                         for p in part.parts)
        setting = cg.setting_labels(part.data, SETTING, rules.reference, MIN_GALLERY)
        counts = coir_kernels.candidate_mixed_rank_counts(extended, lifted(part.gallery), weights,
                                                          setting.candidates, setting.positives, setting.exclude)
        variants, shape = weights.shape[0], counts[0].shape[:-1]
        stacked = cg.SettingLabels(setting.candidates, setting.positives, setting.labels.repeat(variants, 1),
                                   setting.exclude, setting.kept)
        hits = cg.hits_from_counts(flat(counts), stacked, rules.tie_rule, RECALL_KS)
        groups = [q.group for q in part.data.queries]
        masks = {t: setting.kept & torch.tensor([g == t for g in groups], dtype=torch.bool)
                 for t in tasks_of(part.data)}
        per_triple = {k: hits[k].reshape(shape) for k in RECALL_KS}
        metrics, values = {}, {}  # in the protocol's order: task by task, then the averages
        for task, mask in masks.items():
            for k in RECALL_KS:
                values[f"{task} R@{k}"] = cg.query_shares(per_triple[k], mask)
                metrics[f"{task} R@{k}"] = [cg.recall(row, mask) for row in per_triple[k]]
        for k in RECALL_KS:
            values[f"avg R@{k}"] = sum(values[f"{t} R@{k}"] for t in masks) / len(masks)
            metrics[f"avg R@{k}"] = [sum(metrics[f"{t} R@{k}"][w] for t in masks) / len(masks)
                                     for w in range(variants)]
        return metrics, values


MIXERS.register("genecis")(GeneCISMixer())
