"""Mixing under the FashionIQ protocol (harness/evaluation/protocols/fashioniq.py):
each query ranked within its category's gallery, the reference removed; R@10 and
R@50 per category, their unweighted mean over categories ("avg R@K") and Avg.

One pass of the retrieval core per category block (its queries against its
gallery columns), every triple at once. The phrasings of one annotation
(fashioniq-both-orders) are merged first, part by part, as the protocol merges
the composed query (`merge_phrasings`): the mixed query of an annotation is the
mix of its merged q, t and f, so q alone, t alone and f alone rank exactly as the
protocol ranks its three rows."""

from __future__ import annotations

from dataclasses import replace

import torch

from harness.evaluation.metrics import values_at
from harness.evaluation.protocols.base import ScoringRules
from harness.evaluation.protocols.fashioniq import (
    RECALL_KS,
    category_inputs,  # the protocol's own blocks (rows, gallery columns, excluded item, target)
    columns_for,
    fashioniq_query_values,
    merge_phrasings,
)
from harness.mixing.adapters.base import MIXERS, mixed_counts, percents, variant_ranks

Hits = dict[str, tuple[list[int], dict[int, torch.Tensor]]]  # category -> (rows, {K: (W, Q_c) hits})


class FashionIQMixer:
    name = "fashioniq"
    panels = ("avg R@10", "avg R@50", "Avg")

    @staticmethod
    def merge(data, emb):
        queries, merged = merge_phrasings(data.queries, emb)
        return replace(data, queries=queries), merged

    def metrics(self, part) -> list[str]:
        present = {q.group for q in part.data.queries}
        return columns_for([c for c in part.data.groups if c in present])

    def hits(self, part, weights: torch.Tensor, rules: ScoringRules) -> Hits:
        """Per category with queries: its rows and each triple's hits within K, as the
        protocol's `category_hits` computes them for one query set."""
        out: Hits = {}
        for category, ids in part.data.groups.items():
            rows, columns, exclude, positives = category_inputs(part.data.queries, part.gallery_ids, ids, category,
                                                                 rules.reference)
            if not rows:
                continue
            counts = mixed_counts(tuple(p[rows] for p in part.parts), part.gallery[columns], weights, positives,
                                  exclude)
            labels = (positives >= 0).double()
            ranks = variant_ranks(counts, labels, rules.tie_rule)
            stacked = labels.repeat(weights.shape[0], 1)
            out[category] = (rows, {k: values_at(ranks, stacked, k).double().reshape(weights.shape[0], len(rows))
                                    for k in RECALL_KS})
        return out

    def sweep(self, part, weights: torch.Tensor, rules: ScoringRules):
        """({metric: [W]} as the protocol's `fashioniq_metrics`, {metric: (W, Q)} as its
        `fashioniq_query_values`) for every triple."""
        hits = self.hits(part, weights, rules)
        metrics = {f"{c} R@{k}": percents(v) for c, (_, by_k) in hits.items() for k, v in by_k.items()}
        for k in RECALL_KS:
            metrics[f"avg R@{k}"] = [sum(values) / len(hits) for values in
                                     zip(*(metrics[f"{c} R@{k}"] for c in hits))]
        metrics["Avg"] = [sum(values) / len(RECALL_KS) for values in zip(*(metrics[f"avg R@{k}"] for k in RECALL_KS))]
        per_triple = [fashioniq_query_values(len(part.data.queries), {
            c: (rows, {k: v[w] for k, v in by_k.items()}, None) for c, (rows, by_k) in hits.items()})
            for w in range(weights.shape[0])]
        values = {name: torch.stack([v[name] for v in per_triple]) for name in per_triple[0]} if per_triple else {}
        return metrics, values


MIXERS.register("fashioniq")(FashionIQMixer())
