"""The CIRR protocol (harness/evaluation/metrics.py): Recall@K over the split's
gallery and Recall_subset@K within the image set, the reference removed, for the
composed query and both baselines; test1 writes the two server files. Suites
`cirr` and `shapes` use it. The embeddings are checked first
(harness/evaluation/validate.py): nothing is scored from NaN, mismatched or empty
tensors."""

from __future__ import annotations

from pathlib import Path

import torch
from tabulate import tabulate

from harness.evaluation import shard_scoring
from harness.evaluation.embed import SplitEmbeddings, methods_of
from harness.evaluation.metrics import (
    CIRR_METRICS,
    RECALL_KS,
    SUBSET_KS,
    build_labels,
    cirr_query_values,
    means,
    subset_scores_of,
)
from harness.evaluation.per_query import cirr_records
from harness.evaluation.protocols.base import PROTOCOLS, ScoringRules
from harness.evaluation.protocols.tables import interval_table
from harness.evaluation.server_files import RECALL_TOP, SUBSET_TOP, write_cirr_submissions
from harness.evaluation.validate import check_embeddings
from harness.suites.base import SplitData


def query_values(data: SplitData, emb: SplitEmbeddings, convention: str, tie_rule: str
                 ) -> dict[str, dict[str, torch.Tensor]]:
    """{method: {metric: each query's value (Q,)}}."""
    check_embeddings(data, emb, methods_of(emb))
    labels = build_labels(data.queries, {g: i for i, g in enumerate(emb.gallery_ids)})
    return {
        method: cirr_query_values(getattr(emb, attr), emb.gallery, labels, convention, tie_rule,
                                   emb.gallery_offset)
        for method, attr in methods_of(emb).items()
    }


def evaluate_methods(data: SplitData, emb: SplitEmbeddings, convention: str, tie_rule: str
                     ) -> dict[str, dict[str, float]]:
    return {method: {name: v[0] for name, v in means(values).items()}
            for method, values in query_values(data, emb, convention, tie_rule).items()}


def write_server_files(data: SplitData, emb: SplitEmbeddings, directory: Path, stem: str) -> dict[str, str]:
    """Top-50 over the gallery and top-3 within the image set, reference removed;
    ties broken by gallery (or member) order."""
    check_embeddings(data, emb, {"composed f(q,t)": "composed"})
    labels = build_labels(data.queries, {g: i for i, g in enumerate(emb.gallery_ids)})
    _, top = shard_scoring.topk_excluding(emb.composed, emb.gallery, RECALL_TOP, labels.reference,
                                          offset=emb.gallery_offset)
    top_recall = [[emb.gallery_ids[i] for i in row] for row in top.tolist()]

    scores, valid = subset_scores_of(emb.composed, emb.gallery, labels, emb.gallery_offset)
    order = torch.sort(scores.masked_fill(~valid, float("-inf")), dim=1, descending=True, stable=True).indices
    top_subset = []
    for q, row in zip(data.queries, order.tolist()):
        candidates = [q.members[m] for m in row if m < len(q.members) and q.members[m] != q.reference]
        top_subset.append(candidates[:SUBSET_TOP])
    version = data.provenance.get("version", "rc2")
    return write_cirr_submissions(
        directory, stem, [q.pair_id for q in data.queries], top_recall, top_subset, version
    )


class CirrProtocol:
    name = "cirr"
    reference_rules = ("remove",)  # every peer's CIRR scoring removes it
    headline_metric = "Avg"  # what tuned hyperparameters are chosen for (harness/similarity/study.py)
    token_pooling = "max"  # CoVR-2: src/test/blip2/cirr.py, cirr_val.py (harness/evaluation/token_pooling.py)

    def describe(self, data, rules: ScoringRules) -> dict:
        # The fields CIRR results always carried, in their order (no "scoring" field).
        return {
            "reference_removed": True,
            "tie_rule": rules.tie_rule,
            "convention": rules.convention,
            "recall_ks": list(RECALL_KS),
            "subset_ks": list(SUBSET_KS),
        }

    def evaluate(self, data, emb, rules: ScoringRules) -> dict[str, dict[str, float]]:
        return evaluate_methods(data, emb, rules.convention, rules.tie_rule)

    def query_values(self, data, emb, rules: ScoringRules) -> dict[str, dict[str, torch.Tensor]]:
        return query_values(data, emb, rules.convention, rules.tie_rule)

    def query_records(self, data, emb, rules: ScoringRules) -> list[dict]:
        return cirr_records(data, emb, rules.convention, rules.tie_rule)

    def write_server_files(self, data, emb, rules: ScoringRules, directory: Path, stem: str) -> dict[str, str]:
        return write_server_files(data, emb, directory, stem)

    def metrics_table(self, result: dict) -> str:
        """Every CIRR metric of every method, and chance: 1/(G-1) of the gallery without
        the reference for Recall@K, k/5 of the other image-set members for Rsubset@K."""
        rows = [[method, *(m[c] for c in CIRR_METRICS)] for method, m in result["metrics"].items()]
        chance = 100.0 / max(1, result["protocol"]["gallery_images"] - 1)
        rows.append(["chance", *([chance * k for k in RECALL_KS]), *(100.0 * k / 5 for k in SUBSET_KS), None])
        text = tabulate(rows, headers=["method", *CIRR_METRICS], tablefmt="github", floatfmt=".2f", missingval="")
        intervals = interval_table(result, CIRR_METRICS)
        return text + ("\n\n" + intervals if intervals else "")


PROTOCOLS.register("cirr")(CirrProtocol())
