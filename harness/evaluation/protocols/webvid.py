"""The WebVid-CoVR protocol (harness/suites/webvid_covr.py states the conventions):
each query ranks the split's target videos, its own reference video removed where
it is one of them; Recall@{1,5,10,50} on the target, meanR3 = mean of R@1, R@5,
R@10 and meanR4 = mean of the four, as CoVR's eval_recall. The ranks come from the
CIRR-protocol counts (harness/evaluation/metrics.py) without image sets. Dense-WebVid-CoVR
(harness/suites/dense_webvid_covr.py) is scored the same way, as BSE-CoVR's
evalute_scores.py does, with its own paper rows and its text length in the block.

`--reference` (harness/evaluation/reference_rule.py): `remove` (default, the rule
CoVR's code means), `keep` (as mteb's WebVid-CoVR task is reported to score), `covr-order`
(CoVR's mask as its code places it when the CSV is not sorted by `pth2`: on such a
file CoVR prints other numbers than `remove` gives; on a sorted file they agree)."""

from __future__ import annotations

from pathlib import Path

import torch

from harness.core.errors import HarnessError
from harness.evaluation.embed import methods_of
from harness.evaluation.metrics import build_labels, cirr_query_values, percent
from harness.evaluation.paper import PAPER_DENSE_WEBVID, PAPER_WEBVID
from harness.evaluation.per_query import cirr_records
from harness.evaluation.protocols.base import PROTOCOLS, ScoringRules
from harness.evaluation.protocols.tables import (
    interval_table,
    method_rows,
    paper_note,
    paper_rows,
    table,
)
from harness.evaluation.reference_rule import excluded_items, recorded
from harness.evaluation.validate import check_embeddings

RECALL_KS = (1, 5, 10, 50)
METRICS = [f"R@{k}" for k in RECALL_KS] + ["meanR3", "meanR4"]


def webvid_values(recalls: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each query's R@K hits and its meanR3 / meanR4 (means of its hits)."""
    out = {f"R@{k}": recalls[f"R@{k}"] for k in RECALL_KS}
    out["meanR3"] = (out["R@1"] + out["R@5"] + out["R@10"]) / 3
    out["meanR4"] = (out["R@1"] + out["R@5"] + out["R@10"] + out["R@50"]) / 4
    return out


class WebVidProtocol:
    name = "webvid"
    reference_rules = ("remove", "keep", "covr-order")
    headline_metric = "R@1"  # what tuned hyperparameters are chosen for (harness/similarity/study.py)
    token_pooling = "mean"  # CoVR-2: src/test/blip2/webvid_covr.py lines 78-79, 100-102

    def describe(self, data, rules: ScoringRules) -> dict:
        block = {"scoring": self.name, "reference_removed": recorded(rules.reference), "tie_rule": rules.tie_rule,
                 "recall_ks": list(RECALL_KS), "video": data.provenance.get("video")}
        if "text" in data.provenance:  # Dense-WebVid-CoVR: the text length and how long the texts are
            block["text"] = data.provenance["text"]
        return block

    def query_values(self, data, emb, rules: ScoringRules) -> dict[str, dict[str, torch.Tensor]]:
        check_embeddings(data, emb, methods_of(emb))
        labels = build_labels(data.queries, {g: i for i, g in enumerate(emb.gallery_ids)},
                              excluded_items(data.queries, rules.reference))
        return {method: webvid_values(cirr_query_values(getattr(emb, attr), emb.gallery, labels, "covr",
                                                        rules.tie_rule, emb.gallery_offset))
                for method, attr in methods_of(emb).items()}

    def evaluate(self, data, emb, rules: ScoringRules) -> dict[str, dict[str, float]]:
        metrics = {}
        for method, values in self.query_values(data, emb, rules).items():
            m = {f"R@{k}": percent(values[f"R@{k}"]).item() for k in RECALL_KS}
            m["meanR3"] = (m["R@1"] + m["R@5"] + m["R@10"]) / 3  # CoVR: the mean of the percentages
            m["meanR4"] = (m["R@1"] + m["R@5"] + m["R@10"] + m["R@50"]) / 4
            metrics[method] = m
        return metrics

    def query_records(self, data, emb, rules: ScoringRules) -> list[dict]:
        records = cirr_records(data, emb, "covr", rules.tie_rule, rules.reference)
        for record in records:
            for method in record["methods"].values():
                hits = {k: torch.tensor([v]) for k, v in method["values"].items()}
                method["values"] = {k: v.item() for k, v in webvid_values(hits).items()}
                method.pop("subset_rank", None)  # WebVid-CoVR has no image sets
        return records

    def write_server_files(self, data, emb, rules: ScoringRules, directory: Path, stem: str) -> dict[str, str]:
        raise HarnessError("WebVid-CoVR has no evaluation server: every split has targets and is scored")

    def metrics_table(self, result: dict) -> str:
        chance = {f"R@{k}": min(100.0, 100.0 * k / max(1, result["protocol"]["gallery_images"]))
                  for k in RECALL_KS}
        paper = PAPER_DENSE_WEBVID if result["protocol"]["suite"] == "dense-webvid-covr" else PAPER_WEBVID
        rows = method_rows(result, METRICS, chance) + paper_rows(paper, METRICS)
        intervals = interval_table(result, METRICS)
        return table(rows, METRICS) + "\n\n" + paper_note(result, paper) + " " + COVR_ORDER_NOTE + (
            "\n\n" + intervals if intervals else "")


COVR_ORDER_NOTE = (
    "CoVR's own masking follows its CSV's order: on a file not sorted by pth2 it masks other videos "
    "than the query's reference, and its printed numbers then match --reference covr-order, not the "
    "reference removal this harness does by default (harness/evaluation/reference_rule.py).")


PROTOCOLS.register("webvid")(WebVidProtocol())
