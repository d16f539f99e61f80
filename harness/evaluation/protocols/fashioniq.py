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

from harness.core.atomic import write_json
from harness.evaluation import shard_scoring
from harness.evaluation.embed import methods_of
from harness.evaluation.metrics import percent, ranks_with_ties, values_at
from harness.evaluation.paper import PAPER_FASHIONIQ
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

    def mean(tensor: torch.Tensor | None) -> torch.Tensor | None:
        if tensor is None:  # a baseline that was not embedded
            return None
        total = torch.zeros(len(unique), *tensor.shape[1:]).index_add_(0, index, F.normalize(tensor.float(), dim=-1))
        return F.normalize(total, dim=-1)

    first = {}
    for q in queries:
        first.setdefault(q.pair_id, q)
    merged = replace(emb, composed=mean(emb.composed), image=mean(emb.image), text=mean(emb.text))
    return [first[p] for p in unique], merged


def category_inputs(queries: Sequence[Query], gallery_ids: list[str], ids: list[str], category: str,
                     reference: str = "remove"):
    """Rows of the category's queries, the gallery rows of its images, each query's
    removed item (`reference`, harness/evaluation/reference_rule.py) in category
    coordinates (-1: none, or not in the category's gallery), and its target there
    (-1 where the target is the removed item, a miss as in CoVR, or unknown: test)."""
    index = {g: i for i, g in enumerate(gallery_ids)}
    local = {g: j for j, g in enumerate(ids)}
    rows = [i for i, q in enumerate(queries) if q.group == category]
    removed = excluded_items([queries[i] for i in rows], reference)
    columns = torch.tensor([index[g] for g in ids], dtype=torch.long)
    exclude = excluded_indices(removed, local)
    positives = torch.tensor([[local[queries[i].target] if queries[i].target not in (None, item) else -1]
                              for i, item in zip(rows, removed)], dtype=torch.long).reshape(len(rows), 1)
    return rows, columns, exclude, positives


def _columns_of(offset: torch.Tensor | None, columns: torch.Tensor) -> torch.Tensor | None:
    """A category gallery's share of a per-item score offset."""
    return None if offset is None else offset[columns]


def category_hits(
    queries: Sequence[Query],
    query_emb: torch.Tensor,
    gallery_emb: torch.Tensor,
    gallery_ids: list[str],
    groups: dict[str, list[str]],
    tie_rule: str = "pessimistic",
    ks: Sequence[int] = RECALL_KS,
    reference: str = "remove",
    offset: torch.Tensor | None = None,
) -> dict[str, tuple[list[int], dict[int, torch.Tensor], torch.Tensor]]:
    """{category: (its query rows, {K: hit within K per query, float64}, the target's
    0-based rank per query)} for the categories that have queries; `offset` (G,): added
    to each item's score."""
    hits = {}
    for category, ids in groups.items():
        rows, columns, exclude, positives = category_inputs(queries, gallery_ids, ids, category, reference)
        if not rows:
            continue
        greater, equal, pos_scores = shard_scoring.target_rank_counts(
            query_emb[rows], gallery_emb[columns], positives, exclude, offset=_columns_of(offset, columns)
        )
        labels = (positives >= 0).double()
        ranks = ranks_with_ties(greater, equal, pos_scores, labels, tie_rule)
        hits[category] = (rows, {k: values_at(ranks, labels, k).double() for k in ks}, ranks[:, 0])
    return hits


def fashioniq_metrics(
    queries: Sequence[Query],
    query_emb: torch.Tensor,
    gallery_emb: torch.Tensor,
    gallery_ids: list[str],
    groups: dict[str, list[str]],
    tie_rule: str = "pessimistic",
    ks: Sequence[int] = RECALL_KS,
    reference: str = "remove",
    offset: torch.Tensor | None = None,
) -> dict[str, float]:
    """R@K per category ("dress R@10"), their unweighted mean over the categories that
    have queries ("avg R@10"), and Avg, the mean of the "avg" values."""
    hits = category_hits(queries, query_emb, gallery_emb, gallery_ids, groups, tie_rule, ks, reference, offset)
    metrics = {f"{c} R@{k}": percent(v).item() for c, (_, by_k, _) in hits.items() for k, v in by_k.items()}
    for k in ks:
        metrics[f"avg R@{k}"] = sum(metrics[f"{c} R@{k}"] for c in hits) / len(hits)
    metrics["Avg"] = sum(metrics[f"avg R@{k}"] for k in ks) / len(ks)
    return metrics


def fashioniq_query_values(num_queries: int, hits: dict[str, tuple[list[int], dict[int, torch.Tensor], torch.Tensor]],
                           ks: Sequence[int] = RECALL_KS) -> dict[str, torch.Tensor]:
    """Each query's share of every metric, (Q,), so that a metric is 100 x the mean
    over all Q queries (harness/evaluation/intervals.py resamples them): a category's
    R@K weighs its hits by Q / Q_c (zero outside it), the averages over categories by
    Q / (C x Q_c), so each category counts equally whatever its size."""
    values = {}
    for c, (rows, by_k, _) in hits.items():
        index = torch.tensor(rows, dtype=torch.long)
        for k, v in by_k.items():
            share = v * (num_queries / len(rows))
            values[f"{c} R@{k}"] = torch.zeros(num_queries, dtype=torch.float64).index_copy_(0, index, share)
    for k in ks:
        values[f"avg R@{k}"] = sum(values[f"{c} R@{k}"] for c in hits) / len(hits)
    values["Avg"] = sum(values[f"avg R@{k}"] for k in ks) / len(ks)
    return values


def columns_for(categories: Sequence[str], ks: Sequence[int] = RECALL_KS) -> list[str]:
    return [f"{c} R@{k}" for c in categories for k in ks] + [f"avg R@{k}" for k in ks] + ["Avg"]


class FashionIQProtocol:
    name = "fashioniq"
    reference_rules = ("remove", "keep")
    headline_metric = "Avg"  # what tuned hyperparameters are chosen for (harness/similarity/study.py)
    token_pooling = "mean"  # CoVR-2: src/test/blip2/fashioniq.py lines 73-75, 99-103 (harness/evaluation/token_pooling.py)

    def describe(self, data, rules: ScoringRules) -> dict:
        annotations = {c: len({q.pair_id for q in data.queries if q.group == c}) for c in data.groups}
        return {
            "scoring": self.name,
            "queries": sum(annotations.values()),
            "reference_removed": recorded(rules.reference),
            "tie_rule": rules.tie_rule,
            "caption_rule": data.provenance.get("caption_rule"),
            "categories": list(data.groups),
            "category_queries": annotations,
            "category_gallery_images": {c: len(ids) for c, ids in data.groups.items()},
            "recall_ks": list(RECALL_KS),
        }

    def evaluate(self, data, emb, rules: ScoringRules) -> dict[str, dict[str, float]]:
        check_embeddings(data, emb, methods_of(emb))
        queries, merged = merge_phrasings(data.queries, emb)
        return {
            method: fashioniq_metrics(queries, getattr(merged, attr), merged.gallery, merged.gallery_ids,
                                      data.groups, rules.tie_rule, reference=rules.reference,
                                      offset=merged.gallery_offset)
            for method, attr in methods_of(emb).items()
        }

    def query_values(self, data, emb, rules: ScoringRules) -> dict[str, dict[str, torch.Tensor]]:
        check_embeddings(data, emb, methods_of(emb))
        queries, merged = merge_phrasings(data.queries, emb)
        return {
            method: fashioniq_query_values(len(queries), category_hits(
                queries, getattr(merged, attr), merged.gallery, merged.gallery_ids, data.groups, rules.tie_rule,
                reference=rules.reference, offset=merged.gallery_offset))
            for method, attr in methods_of(emb).items()
        }

    def query_records(self, data, emb, rules: ScoringRules) -> list[dict]:
        """Per annotation (harness/evaluation/per_query.py): the target's rank and the top
        10 within its category; values are its own hits ("dress R@10"), whose mean
        over the category's annotations is that category's metric."""
        check_embeddings(data, emb, methods_of(emb))
        queries, merged = merge_phrasings(data.queries, emb)
        records = [{"pair_id": q.pair_id, "caption": q.caption, "reference": q.reference, "target": q.target,
                    "category": q.group, "methods": {}} for q in queries]
        for method, attr in methods_of(emb).items():
            query_emb = getattr(merged, attr)
            hits = category_hits(queries, query_emb, merged.gallery, merged.gallery_ids, data.groups, rules.tie_rule,
                                 reference=rules.reference, offset=merged.gallery_offset)
            for category, (rows, by_k, ranks) in hits.items():
                ids = data.groups[category]
                _, columns, exclude, positives = category_inputs(queries, merged.gallery_ids, ids, category,
                                                                  rules.reference)
                scores, top = tie_ordered_top(query_emb[rows], merged.gallery[columns], min(10, len(ids) - 1),
                                              exclude, positives, (positives >= 0).double(), rules.tie_rule,
                                              offset=_columns_of(merged.gallery_offset, columns))
                for j, i in enumerate(rows):
                    rank = int(ranks[j])
                    records[i]["methods"][method] = {
                        "target_rank": rank + 1 if rank < torch.iinfo(ranks.dtype).max else None,
                        "top": [ids[c] for c in top[j].tolist()],
                        "top_scores": [round(v, 6) for v in scores[j].tolist()],
                        "values": {f"{category} R@{k}": v[j].item() for k, v in by_k.items()},
                    }
        return records

    def write_server_files(self, data, emb, rules: ScoringRules, directory: Path, stem: str) -> dict[str, str]:
        """Top 50 of each annotation within its category, reference removed (or kept, as
        --reference says; ties by gallery order): FashionIQ has no server, this is the
        ranking to score offline."""
        check_embeddings(data, emb, {"composed f(q,t)": "composed"})
        queries, merged = merge_phrasings(data.queries, emb)
        rankings = []
        for category, ids in data.groups.items():
            rows, columns, exclude, _ = category_inputs(queries, merged.gallery_ids, ids, category, rules.reference)
            if not rows:
                continue
            _, top = shard_scoring.topk_excluding(merged.composed[rows], merged.gallery[columns], RANKING_TOP,
                                                  exclude, offset=_columns_of(merged.gallery_offset, columns))
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
        intervals = interval_table(result, columns)
        return table(rows, columns) + "\n\n" + paper_note(result, PAPER_FASHIONIQ) + ("\n\n" + intervals if intervals else "")


def _with_avg(metrics: dict) -> dict:
    """Avg of a paper row, from its two reported means."""
    if "avg R@10" in metrics and "avg R@50" in metrics:
        return {**metrics, "Avg": (metrics["avg R@10"] + metrics["avg R@50"]) / 2}
    return metrics


PROTOCOLS.register("fashioniq")(FashionIQProtocol())
