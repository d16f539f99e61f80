"""The GeneCIS protocol (Vaze et al., CVPR 2023; facebookresearch/genecis at 0c5c968,
eval/eval_functions.py `validate`, lines 83-137), per-query galleries scored from one
embedding of the split's pool (harness/evaluation/candidate_galleries.py):

- each template ranks its own candidates, the target and its gallery images
  (`SplitData.candidates["gallery"]`; harness/suites/genecis.py), by the inner product
  of the normalised gallery features with the composed feature (lines 105-115; the
  harness's features are unit length, so this is the cosine);
- Recall@{1,2,3} (eval/evaluate.py line 168): a hit at K when the target is within the
  first K (utils/metric_utils.py `get_recall`, lines 17-26), averaged over the
  templates of each task; `avg R@K` is the mean over the tasks of the split (GeneCIS's
  "Average Recall @ 1", DOWNLOAD.md, is the mean over the four);
- ties: GeneCIS's code sorts by torch's (unstable) descending sort, which no rule
  fixes; the run's tie rule places them (pessimistic by default);
- nothing is masked (lines 83-126): `--reference keep` is the suite's default, and the
  reference is not among a template's candidates in the real object files (0 of 3,920);
  `remove` takes it out where it is.

Per-query values are scaled per task so that the mean over all queries is the task's
recall (candidate_galleries.query_shares), and `avg R@K`'s values are those over the
number of tasks, so the bootstrap resamples each figure as it is computed.
There is no evaluation server: write_server_files refuses.
"""

from __future__ import annotations

from pathlib import Path

import torch

import coir_kernels
from harness.core.errors import HarnessError
from harness.evaluation import candidate_galleries as cg
from harness.evaluation.embed import methods_of
from harness.evaluation.paper import PAPER_GENECIS
from harness.evaluation.protocols.base import PROTOCOLS, ScoringRules
from harness.evaluation.protocols.tables import (
    interval_table,
    method_rows,
    paper_note,
    paper_rows,
    table,
)
from harness.evaluation.reference_rule import recorded
from harness.evaluation.validate import check_embeddings

RECALL_KS = (1, 2, 3)  # eval/evaluate.py line 168
TASKS = ("focus_attribute", "change_attribute", "focus_object", "change_object")  # harness/suites/genecis_layout.py
SETTING = "gallery"
MIN_GALLERY = 1  # GeneCIS keeps every template
TOP = 10


def tasks_of(data) -> list[str]:
    present = {q.group for q in data.queries}
    unknown = present - set(TASKS)
    if unknown:
        raise HarnessError(f"{data.suite}/{data.split}: queries of no GeneCIS task ({', '.join(sorted(unknown))})")
    return [t for t in TASKS if t in present]


def metric_names(tasks: list[str]) -> list[str]:
    return [f"{t} R@{k}" for t in tasks for k in RECALL_KS] + [f"avg R@{k}" for k in RECALL_KS]


def task_masks(data, kept: torch.Tensor) -> dict[str, torch.Tensor]:
    """{task: (Q,) its kept queries}, in TASKS order."""
    groups = [q.group for q in data.queries]
    return {t: kept & torch.tensor([g == t for g in groups], dtype=torch.bool) for t in tasks_of(data)}


def task_values(hits: dict[int, torch.Tensor], masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-query values ((Q,) or (W, Q) hits) of each task's R@K and their average."""
    out = {f"{t} R@{k}": cg.query_shares(hits[k], mask) for t, mask in masks.items() for k in RECALL_KS}
    for k in RECALL_KS:
        out[f"avg R@{k}"] = sum(out[f"{t} R@{k}"] for t in masks) / len(masks)
    return out


def task_metrics(hits: dict[int, torch.Tensor], masks: dict[str, torch.Tensor]) -> dict[str, float]:
    """Each task's R@K over its kept queries ((Q,) hits), then their average (GeneCIS's figure)."""
    out = {f"{t} R@{k}": cg.recall(hits[k], mask) for t, mask in masks.items() for k in RECALL_KS}
    out.update({f"avg R@{k}": sum(out[f"{t} R@{k}"] for t in masks) / len(masks) for k in RECALL_KS})
    return out


class GeneCISProtocol:
    name = "genecis"
    reference_rules = ("keep", "remove")  # keep first: the suite's default
    headline_metric = "avg R@1"
    token_pooling = "mean"  # no CoVR-2 code for GeneCIS: the rule of the harness's other per-query protocol

    def _labels(self, data, rules: ScoringRules) -> cg.SettingLabels:
        if SETTING not in data.candidates:
            raise HarnessError(f"{data.suite}/{data.split} has no per-template galleries for the genecis protocol")
        return cg.setting_labels(data, SETTING, rules.reference, MIN_GALLERY)

    def describe(self, data, rules: ScoringRules) -> dict:
        setting = self._labels(data, rules)
        return {"scoring": self.name, "reference_removed": recorded(rules.reference), "tie_rule": rules.tie_rule,
                "recall_ks": list(RECALL_KS), "tasks": tasks_of(data),
                "mean_candidates": round(float(cg.taking_part(setting.candidates, setting.exclude)
                                               .double().mean()), 2),
                "crop": data.provenance.get("crop")}

    def _hits(self, data, emb, rules: ScoringRules):
        """{method: ({K: (Q,) hits}, counts)}, the labels and each task's query mask."""
        check_embeddings(data, emb, methods_of(emb))
        setting = self._labels(data, rules)
        masks = task_masks(data, setting.kept)
        hits = {method: cg.setting_hits(getattr(emb, attr), emb.gallery, setting, rules.tie_rule, RECALL_KS,
                                        emb.gallery_offset)
                for method, attr in methods_of(emb).items()}
        return hits, setting, masks

    def query_values(self, data, emb, rules: ScoringRules) -> dict[str, dict[str, torch.Tensor]]:
        hits, _, masks = self._hits(data, emb, rules)
        return {method: task_values(h, masks) for method, (h, _) in hits.items()}

    def evaluate(self, data, emb, rules: ScoringRules) -> dict[str, dict[str, float]]:
        hits, _, masks = self._hits(data, emb, rules)
        return {method: task_metrics(h, masks) for method, (h, _) in hits.items()}

    def query_records(self, data, emb, rules: ScoringRules) -> list[dict]:
        hits, setting, masks = self._hits(data, emb, rules)
        ids = emb.gallery_ids
        records = [{"pair_id": q.pair_id, "task": q.group, "caption": q.caption, "reference": q.reference,
                    "target": q.target, "methods": {}} for q in data.queries]
        for method, attr in methods_of(emb).items():
            h, counts = hits[method]
            ranks = cg.best_rank(counts, setting, rules.tie_rule)
            values = {name: v.tolist() for name, v in task_values(h, masks).items() if not name.startswith("avg")}
            scores, top = coir_kernels.candidate_topk(getattr(emb, attr), emb.gallery, setting.candidates, TOP,
                                                      setting.exclude, offset=emb.gallery_offset)
            for i, record in enumerate(records):
                record["methods"][method] = {
                    "target_rank": ranks[i],
                    "top": [ids[j] for j in top[i].tolist() if j >= 0],
                    "top_scores": [round(s, 6) for s, j in zip(scores[i].tolist(), top[i].tolist()) if j >= 0],
                    "values": {name: v[i] for name, v in values.items() if name.startswith(record["task"])},
                }
        return records

    def write_server_files(self, data, emb, rules: ScoringRules, directory: Path, stem: str) -> dict[str, str]:
        raise HarnessError("GeneCIS has no evaluation server: its templates have targets and are scored")

    def metrics_table(self, result: dict) -> str:
        columns = metric_names(result["protocol"].get("tasks", list(TASKS)))
        size = max(1.0, result["protocol"].get("mean_candidates", 1.0))
        chance = {c: min(100.0, 100.0 * int(c[-1]) / size) for c in columns}
        rows = method_rows(result, columns, chance) + paper_rows(PAPER_GENECIS, columns)
        intervals = interval_table(result, columns)
        return (table(rows, columns) + "\n\n" + paper_note(result, PAPER_GENECIS) + " " + NOTE
                + ("\n\n" + intervals if intervals else ""))


NOTE = ("GeneCIS's paper rows give the average Recall@1 over the four tasks only (DOWNLOAD.md); chance is K over "
        "the mean number of candidates per template.")

PROTOCOLS.register("genecis")(GeneCISProtocol())
