"""The CIRCO protocol (harness/suites/circo.py states the conventions): mAP@K over
every ground truth, normalised by min(#ground truths, K), and Recall@K on the
annotated target, the reference removed; the test split writes the server file
{"<query id>": [50 image ids]} for every query, checked for coverage and
duplicates before it is written."""

from __future__ import annotations

from pathlib import Path

import torch

import kernels
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
from harness.evaluation.server_files import CIRCO_TOP, write_circo_submission
from harness.evaluation.validate import check_embeddings


def ground_truth_labels(data, gallery_ids: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """positives (Q, P) gallery indices of each query's ground truths, target first,
    -1 for padding and for a ground truth that is the reference (removed, a miss);
    counts (Q,) ground truths per query; exclude (Q,) the reference's index."""
    index = {g: i for i, g in enumerate(gallery_ids)}
    width = max((len(q.ground_truths) for q in data.queries), default=0)
    positives = torch.full((len(data.queries), max(1, width)), -1, dtype=torch.long)
    for i, q in enumerate(data.queries):
        for j, gid in enumerate(q.ground_truths):
            if gid != q.reference:
                positives[i, j] = index[gid]
    counts = torch.tensor([len(q.ground_truths) for q in data.queries], dtype=torch.long)
    exclude = torch.tensor([index.get(q.reference, -1) for q in data.queries], dtype=torch.long)
    return positives, counts, exclude


class CircoProtocol:
    name = "circo"

    def describe(self, data, rules: ScoringRules) -> dict:
        fields = {
            "scoring": self.name,
            "reference_removed": True,
            "tie_rule": rules.tie_rule,
            "map_ks": list(MAP_KS),
            "recall_ks": list(RECALL_KS),
        }
        if data.has_targets:
            fields["ground_truths"] = sum(len(q.ground_truths) for q in data.queries)
        return fields

    def evaluate(self, data, emb, rules: ScoringRules) -> dict[str, dict[str, float]]:
        check_embeddings(data, emb, methods_of(emb))
        positives, counts, exclude = ground_truth_labels(data, emb.gallery_ids)
        return {
            method: map_metrics(getattr(emb, attr), emb.gallery, positives, counts, exclude, rules.tie_rule)
            for method, attr in methods_of(emb).items()
        }

    def query_values(self, data, emb, rules: ScoringRules) -> dict[str, dict[str, torch.Tensor]]:
        check_embeddings(data, emb, methods_of(emb))
        positives, counts, exclude = ground_truth_labels(data, emb.gallery_ids)
        return {
            method: map_query_values(getattr(emb, attr), emb.gallery, positives, counts, exclude, rules.tie_rule)
            for method, attr in methods_of(emb).items()
        }

    def query_records(self, data, emb, rules: ScoringRules) -> list[dict]:
        """Per query (harness/evaluation/per_query.py): the annotated target's rank, the
        top 10, and its AP@K and R@K values (their mean is each metric)."""
        check_embeddings(data, emb, methods_of(emb))
        positives, counts, exclude = ground_truth_labels(data, emb.gallery_ids)
        records = [{"pair_id": q.pair_id, "caption": q.caption, "reference": q.reference, "target": q.target,
                    "ground_truths": list(q.ground_truths), "methods": {}} for q in data.queries]
        for method, attr in methods_of(emb).items():
            query = getattr(emb, attr)
            greater, equal, pos_scores = kernels.target_rank_counts(query, emb.gallery, positives, exclude)
            positions = ground_truth_positions(greater, equal, pos_scores, rules.tie_rule)[:, 0].tolist()
            values = map_query_values(query, emb.gallery, positives, counts, exclude, rules.tie_rule)
            scores, top = kernels.topk_excluding(query, emb.gallery, min(10, len(emb.gallery_ids) - 1), exclude)
            for i, record in enumerate(records):
                record["methods"][method] = {
                    "target_rank": positions[i] + 1 if positions[i] < torch.iinfo(torch.long).max else None,
                    "top": [emb.gallery_ids[j] for j in top[i].tolist()],
                    "top_scores": [round(v, 6) for v in scores[i].tolist()],
                    "values": {name: v[i].item() for name, v in values.items()},
                }
        return records

    def write_server_files(self, data, emb, directory: Path, stem: str) -> dict[str, str]:
        check_embeddings(data, emb, {"composed f(q,t)": "composed"})
        index = {g: i for i, g in enumerate(emb.gallery_ids)}
        exclude = torch.tensor([index.get(q.reference, -1) for q in data.queries], dtype=torch.long)
        _, top = kernels.topk_excluding(emb.composed, emb.gallery, CIRCO_TOP, exclude)
        ranked = [[emb.gallery_ids[i] for i in row] for row in top.tolist()]
        path = directory / f"{stem}.circo_submission.json"
        return {"circo": write_circo_submission(path, [q.pair_id for q in data.queries], ranked)}

    def metrics_table(self, result: dict) -> str:
        p = result["protocol"]
        columns = [f"mAP@{k}" for k in p["map_ks"]] + [f"R@{k}" for k in p["recall_ks"]]
        chance = {f"R@{k}": min(100.0, 100.0 * k / max(1, p["gallery_images"] - 1)) for k in p["recall_ks"]}
        rows = method_rows(result, columns, chance) + paper_rows(PAPER_CIRCO, columns)
        intervals = interval_table(result, columns)
        return table(rows, columns) + "\n\n" + paper_note(result, PAPER_CIRCO) + ("\n\n" + intervals if intervals else "")


PROTOCOLS.register("circo")(CircoProtocol())
