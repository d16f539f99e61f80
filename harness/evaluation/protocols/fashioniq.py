"""The FashionIQ protocol (harness/suites/fashioniq.py states the conventions):
each query ranked within its category's gallery, the reference removed; Recall@10
and @50 per category, their mean over categories ("avg R@K") and
Avg = (avg R@10 + avg R@50) / 2. Queries sharing a pair id are phrasings of one
annotation (suite fashioniq-both-orders) and are scored as one query, from the
mean of their normalised embeddings. A split without targets (test) writes the
top 50 of each query instead: FashionIQ has no evaluation server."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

import kernels
from harness.core.atomic import write_json
from harness.evaluation.embed import METHODS
from harness.evaluation.metrics import ranks_with_ties, recalls
from harness.evaluation.paper import PAPER_FASHIONIQ
from harness.evaluation.protocols.base import PROTOCOLS, ScoringRules
from harness.evaluation.protocols.tables import method_rows, paper_note, paper_rows, table
from harness.evaluation.validate import check_embeddings
from harness.suites.base import Query

RECALL_KS = (10, 50)
RANKING_TOP = 50


def merge_phrasings(queries: Sequence[Query], emb):
    """One query per pair id, its embeddings the re-normalised mean of its phrasings'
    (single-vector: ranks as the mean of their scores; multi-vector: token by token)."""
    pair_ids = [q.pair_id for q in queries]
    unique = list(dict.fromkeys(pair_ids))
    if len(unique) == len(pair_ids):
        return list(queries), emb
    row = {p: i for i, p in enumerate(unique)}
    index = torch.tensor([row[p] for p in pair_ids])

    def mean(tensor: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(len(unique), *tensor.shape[1:]).index_add_(0, index, F.normalize(tensor.float(), dim=-1))
        return F.normalize(total, dim=-1)

    first = {}
    for q in queries:
        first.setdefault(q.pair_id, q)
    merged = replace(emb, composed=mean(emb.composed), image=mean(emb.image), text=mean(emb.text))
    return [first[p] for p in unique], merged


def _category_inputs(queries: Sequence[Query], gallery_ids: list[str], ids: list[str], category: str):
    """Rows of the category's queries, the gallery rows of its images, and each query's
    reference in category coordinates (-1 where it is not in the category's gallery)."""
    index = {g: i for i, g in enumerate(gallery_ids)}
    local = {g: j for j, g in enumerate(ids)}
    rows = [i for i, q in enumerate(queries) if q.group == category]
    columns = torch.tensor([index[g] for g in ids], dtype=torch.long)
    exclude = torch.tensor([local.get(queries[i].reference, -1) for i in rows], dtype=torch.long)
    return rows, columns, exclude, local


def fashioniq_metrics(
    queries: Sequence[Query],
    query_emb: torch.Tensor,
    gallery_emb: torch.Tensor,
    gallery_ids: list[str],
    groups: dict[str, list[str]],
    tie_rule: str = "pessimistic",
    ks: Sequence[int] = RECALL_KS,
) -> dict[str, float]:
    """R@K per category ("dress R@10"), their unweighted mean over the categories that
    have queries ("avg R@10"), and Avg, the mean of the "avg" values."""
    metrics: dict[str, float] = {}
    scored = []
    for category, ids in groups.items():
        rows, columns, exclude, local = _category_inputs(queries, gallery_ids, ids, category)
        if not rows:
            continue
        # A target equal to its reference is removed with it: a miss, as in CoVR.
        positives = torch.tensor(
            [[local[queries[i].target] if queries[i].target != queries[i].reference else -1] for i in rows],
            dtype=torch.long,
        )
        greater, equal, pos_scores = kernels.target_rank_counts(
            query_emb[rows], gallery_emb[columns], positives, exclude
        )
        labels = (positives >= 0).float()
        ranks = ranks_with_ties(greater, equal, pos_scores, labels, tie_rule)
        metrics.update({f"{category} R@{k}": v for k, v in recalls(ranks, labels, ks).items()})
        scored.append(category)
    for k in ks:
        metrics[f"avg R@{k}"] = sum(metrics[f"{c} R@{k}"] for c in scored) / len(scored)
    metrics["Avg"] = sum(metrics[f"avg R@{k}"] for k in ks) / len(ks)
    return metrics


def columns_for(categories: Sequence[str], ks: Sequence[int] = RECALL_KS) -> list[str]:
    return [f"{c} R@{k}" for c in categories for k in ks] + [f"avg R@{k}" for k in ks] + ["Avg"]


class FashionIQProtocol:
    name = "fashioniq"

    def describe(self, data, rules: ScoringRules) -> dict:
        annotations = {c: len({q.pair_id for q in data.queries if q.group == c}) for c in data.groups}
        return {
            "scoring": self.name,
            "queries": sum(annotations.values()),
            "reference_removed": True,
            "tie_rule": rules.tie_rule,
            "caption_rule": data.provenance.get("caption_rule"),
            "categories": list(data.groups),
            "category_queries": annotations,
            "category_gallery_images": {c: len(ids) for c, ids in data.groups.items()},
            "recall_ks": list(RECALL_KS),
        }

    def evaluate(self, data, emb, rules: ScoringRules) -> dict[str, dict[str, float]]:
        check_embeddings(data, emb, METHODS)
        queries, merged = merge_phrasings(data.queries, emb)
        return {
            method: fashioniq_metrics(queries, getattr(merged, attr), merged.gallery, merged.gallery_ids,
                                      data.groups, rules.tie_rule)
            for method, attr in METHODS.items()
        }

    def write_server_files(self, data, emb, directory: Path, stem: str) -> dict[str, str]:
        """Top 50 of each annotation within its category, reference removed (ties by
        gallery order): FashionIQ has no server, this is the ranking to score offline."""
        check_embeddings(data, emb, {"composed f(q,t)": "composed"})
        queries, merged = merge_phrasings(data.queries, emb)
        rankings = []
        for category, ids in data.groups.items():
            rows, columns, exclude, _ = _category_inputs(queries, merged.gallery_ids, ids, category)
            if not rows:
                continue
            _, top = kernels.topk_excluding(merged.composed[rows], merged.gallery[columns], RANKING_TOP, exclude)
            for i, ranked in zip(rows, top.tolist()):
                q = queries[i]
                rankings.append({"pair_id": q.pair_id, "category": category, "candidate": q.reference,
                                 "caption": q.caption, "ranking": [ids[j] for j in ranked]})
        path = directory / f"{stem}.fashioniq_rankings.json"
        write_json(path, {"caption_rule": data.provenance.get("caption_rule"), "rankings": rankings})
        return {"rankings": str(path)}

    def metrics_table(self, result: dict) -> str:
        p = result["protocol"]
        columns = columns_for(p["categories"], p["recall_ks"])
        chance = {}
        for c, n in p["category_gallery_images"].items():
            for k in p["recall_ks"]:
                chance[f"{c} R@{k}"] = min(100.0, 100.0 * k / max(1, n - 1))
        for k in p["recall_ks"]:
            chance[f"avg R@{k}"] = sum(chance[f"{c} R@{k}"] for c in p["categories"]) / len(p["categories"])
        chance["Avg"] = sum(chance[f"avg R@{k}"] for k in p["recall_ks"]) / len(p["recall_ks"])
        paper = [{**row, "metrics": _with_avg(row["metrics"])} for row in PAPER_FASHIONIQ]
        rows = method_rows(result, columns, chance) + paper_rows(paper, columns)
        return table(rows, columns) + "\n\n" + paper_note(result, PAPER_FASHIONIQ)


def _with_avg(metrics: dict) -> dict:
    """Avg of a paper row, from its two reported means."""
    if "avg R@10" in metrics and "avg R@50" in metrics:
        return {**metrics, "Avg": (metrics["avg R@10"] + metrics["avg R@50"]) / 2}
    return metrics


PROTOCOLS.register("fashioniq")(FashionIQProtocol())
