"""The CIRCO protocol (harness/suites/circo.py states the conventions): mAP@K over
every ground truth, normalised by min(#ground truths, K), and Recall@K on the
annotated target, the reference removed (`--reference keep`: ranked like any image,
as SEARLE and MagicLens score CIRCO); the test split writes the server file
{"<query id>": [50 image ids]} for every query, checked for coverage and
duplicates before it is written. A val run writes the same file for its own
queries (`<run>.circo_val_predictions.json`), its lists ordered by the tie rule
(harness/evaluation/ranked_lists.py), so CIRCO's own evaluation code scoring it
gives the run's mAP@K and Recall@K."""

from __future__ import annotations

from pathlib import Path

import torch

from harness.evaluation import shard_scoring
from harness.evaluation.average_precision import (
    MAP_KS,
    RECALL_KS,
    ground_truth_positions,
    map_metrics,
    map_query_values,
)
from harness.evaluation.embed import methods_of
from harness.evaluation.paper import PAPER_CIRCO
from harness.evaluation.protocols.base import PROTOCOLS, ScoringRules
from harness.evaluation.protocols.tables import (
    interval_table,
    method_rows,
    paper_note,
    paper_rows,
    table,
)
from harness.evaluation.ranked_lists import tie_ordered_top
from harness.evaluation.reference_rule import excluded_indices, excluded_items, recorded
from harness.evaluation.server_files import CIRCO_TOP, write_circo_submission
from harness.evaluation.validate import check_embeddings


def ground_truth_labels(data, gallery_ids: list[str], reference: str = "remove"
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """positives (Q, P) gallery indices of each query's ground truths, target first,
    -1 for padding and for a ground truth that is the removed reference (a miss);
    counts (Q,) ground truths per query; exclude (Q,) the removed item's index, -1 none
    (`reference`: harness/evaluation/reference_rule.py)."""
    index = {g: i for i, g in enumerate(gallery_ids)}
    removed = excluded_items(data.queries, reference)
    width = max((len(q.ground_truths) for q in data.queries), default=0)
    positives = torch.full((len(data.queries), max(1, width)), -1, dtype=torch.long)
    for i, q in enumerate(data.queries):
        for j, gid in enumerate(q.ground_truths):
            if gid != removed[i]:
                positives[i, j] = index[gid]
    counts = torch.tensor([len(q.ground_truths) for q in data.queries], dtype=torch.long)
    exclude = excluded_indices(removed, index)
    return positives, counts, exclude


def ordered_lists(data, emb, query: torch.Tensor, k: int, rules: ScoringRules, counts=None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's top k (scores, gallery indices), ground truths placed by the tie
    rule as the metrics place them (a split without targets: ties by gallery order);
    `counts`: the ground truths' rank counts, where the caller has them."""
    positives, _, exclude = ground_truth_labels(data, emb.gallery_ids, rules.reference)
    # distinct labels, target first: the order ground_truth_positions settles ties between ground truths in
    labels = torch.arange(positives.shape[1], 0, -1, dtype=torch.float64).expand(positives.shape)
    return tie_ordered_top(query, emb.gallery, min(k, len(emb.gallery_ids) - 1), exclude, positives, labels,
                           rules.tie_rule, counts, emb.gallery_offset)


class CircoProtocol:
    name = "circo"
    reference_rules = ("remove", "keep")
    headline_metric = "mAP@10"  # what tuned hyperparameters are chosen for (harness/similarity/study.py)
    token_pooling = "mean"  # CoVR-2: src/test/blip2/circo.py lines 97-100 (harness/evaluation/token_pooling.py)
    val_predictions = True  # a val run writes its lists in the server's format too (harness/outputs.py)

    def describe(self, data, rules: ScoringRules) -> dict:
        fields = {
            "scoring": self.name,
            "reference_removed": recorded(rules.reference),
            "query_template": data.provenance.get("query_template", "caption"),
            "tie_rule": rules.tie_rule,
            "map_ks": list(MAP_KS),
            "recall_ks": list(RECALL_KS),
        }
        if data.has_targets:
            fields["ground_truths"] = sum(len(q.ground_truths) for q in data.queries)
        return fields

    def evaluate(self, data, emb, rules: ScoringRules) -> dict[str, dict[str, float]]:
        check_embeddings(data, emb, methods_of(emb))
        positives, counts, exclude = ground_truth_labels(data, emb.gallery_ids, rules.reference)
        return {
            method: map_metrics(getattr(emb, attr), emb.gallery, positives, counts, exclude, rules.tie_rule,
                                offset=emb.gallery_offset)
            for method, attr in methods_of(emb).items()
        }

    def query_values(self, data, emb, rules: ScoringRules) -> dict[str, dict[str, torch.Tensor]]:
        check_embeddings(data, emb, methods_of(emb))
        positives, counts, exclude = ground_truth_labels(data, emb.gallery_ids, rules.reference)
        return {
            method: map_query_values(getattr(emb, attr), emb.gallery, positives, counts, exclude, rules.tie_rule,
                                     offset=emb.gallery_offset)
            for method, attr in methods_of(emb).items()
        }

    def query_records(self, data, emb, rules: ScoringRules) -> list[dict]:
        """Per query (harness/evaluation/per_query.py): the annotated target's rank, the
        top 10, and its AP@K and R@K values (their mean is each metric)."""
        check_embeddings(data, emb, methods_of(emb))
        positives, counts, exclude = ground_truth_labels(data, emb.gallery_ids, rules.reference)
        records = [{"pair_id": q.pair_id, "caption": q.caption, "reference": q.reference, "target": q.target,
                    "ground_truths": list(q.ground_truths), "methods": {}} for q in data.queries]
        for method, attr in methods_of(emb).items():
            query = getattr(emb, attr)
            greater, equal, pos_scores = shard_scoring.target_rank_counts(query, emb.gallery, positives, exclude,
                                                                          offset=emb.gallery_offset)
            positions = ground_truth_positions(greater, equal, pos_scores, rules.tie_rule)[:, 0].tolist()
            values = map_query_values(query, emb.gallery, positives, counts, exclude, rules.tie_rule,
                                      offset=emb.gallery_offset)
            scores, top = ordered_lists(data, emb, query, 10, rules, (greater, equal, pos_scores))
            for i, record in enumerate(records):
                record["methods"][method] = {
                    "target_rank": positions[i] + 1 if positions[i] < torch.iinfo(torch.long).max else None,
                    "top": [emb.gallery_ids[j] for j in top[i].tolist()],
                    "top_scores": [round(v, 6) for v in scores[i].tolist()],
                    "values": {name: v[i].item() for name, v in values.items()},
                }
        return records

    def write_server_files(self, data, emb, rules: ScoringRules, directory: Path, stem: str) -> dict[str, str]:
        """The server file of a test split; for val, the same file over its queries
        (`circo_val`), which CIRCO's evaluation code scores to the run's figures."""
        check_embeddings(data, emb, {"composed f(q,t)": "composed"})
        _, top = ordered_lists(data, emb, emb.composed, CIRCO_TOP, rules)
        ranked = [[emb.gallery_ids[i] for i in row] for row in top.tolist()]
        name, suffix = ("circo_val", "circo_val_predictions") if data.has_targets else ("circo", "circo_submission")
        path = directory / f"{stem}.{suffix}.json"
        return {name: write_circo_submission(path, [q.pair_id for q in data.queries], ranked)}

    def metrics_table(self, result: dict) -> str:
        p = result["protocol"]
        columns = [f"mAP@{k}" for k in p["map_ks"]] + [f"R@{k}" for k in p["recall_ks"]]
        chance = {f"R@{k}": min(100.0, 100.0 * k / max(1, p["gallery_images"] - 1)) for k in p["recall_ks"]}
        rows = method_rows(result, columns, chance) + paper_rows(PAPER_CIRCO, columns)
        intervals = interval_table(result, columns)
        return table(rows, columns) + "\n\n" + paper_note(result, PAPER_CIRCO) + ("\n\n" + intervals if intervals else "")


PROTOCOLS.register("circo")(CircoProtocol())
