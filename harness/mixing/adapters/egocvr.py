"""Mixing under the EgoCVR protocol (harness/evaluation/protocols/egocvr.py): every
triple's mixed query ranked within each query's own global and local candidates, from
one pass of the retrieval core's candidate counts per setting
(`coir_kernels.candidate_mixed_rank_counts`, the gallery as the protocol scores it:
`lifted`, so its norms are kept), then the protocol's hits, kept queries and per-query
shares (harness/evaluation/candidate_galleries.py). The reference rule is the
protocol's own (`keep` by default), so this adapter takes both."""

from __future__ import annotations

import torch

from harness.evaluation import candidate_galleries as cg
from harness.evaluation.protocols.base import ScoringRules
from harness.evaluation.protocols.egocvr import MIN_GALLERY, SETTINGS
from harness.mixing.adapters.base import MIXERS, candidate_hits, unmerged


class EgoCVRMixer:
    name = "egocvr"
    panels = ("global R@1", "global R@10", "local R@1")
    merge = staticmethod(unmerged)
    reference_rules = ("keep", "remove")  # the rules its sweep scores (harness/mixing/modes.py check)

    def metrics(self, part) -> list[str]:
        return [f"{setting} R@{k}" for setting, ks in SETTINGS.items() for k in ks]

    def sweep(self, part, weights: torch.Tensor, rules: ScoringRules):
        """({metric: [W]}, {metric: (W, Q)}) as the protocol's `evaluate` and
        `query_values` give them for each triple's mixed query."""
        metrics, values = {}, {}
        for name, ks in SETTINGS.items():
            setting = cg.setting_labels(part.data, name, rules.reference, MIN_GALLERY)
            per_triple = candidate_hits(part, weights, setting, rules.tie_rule, ks)
            for k in ks:
                values[f"{name} R@{k}"] = cg.query_shares(per_triple[k], setting.kept)
                metrics[f"{name} R@{k}"] = [cg.recall(row, setting.kept) for row in per_triple[k]]
        return metrics, values


MIXERS.register("egocvr")(EgoCVRMixer())
