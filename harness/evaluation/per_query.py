"""Per-query results: `<run>.queries.jsonl`, one line per query, for looking at what
the model retrieves and for pairing two runs on the same queries.

A CIRR-protocol line:

    {"pair_id": 12, "caption": "...", "reference": "dev-1-0-img0", "target": "dev-2-1-img1",
     "methods": {"composed f(q,t)": {"target_rank": 3, "subset_rank": 1,
                                     "top": ["dev-..", ...], "top_scores": [0.83, ...],
                                     "values": {"R@1": 0.0, "R@5": 1.0, ...}}, ...}}

target_rank is the hard target's 1-based place in the gallery with the reference
removed (as the reference rule says) and ties placed by the run's tie rule (null when
the target is not in the gallery or is the removed item); subset_rank its place among
the other members of the image set (null when it is not one); top the TOP best
gallery ids and their scores, positives placed by the tie rule as the metrics place
them (harness/evaluation/ranked_lists.py); values each metric's value for the query,
whose mean x 100 is the metric in the results file (what
harness/evaluation/intervals.py resamples).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from harness.core.atomic import write_text
from harness.core.errors import HarnessError
from harness.evaluation.embed import methods_of
from harness.evaluation.metrics import (
    build_labels,
    cirr_counts,
    query_values_from_counts,
    ranks_with_ties,
    recall_labels_of,
)
from harness.evaluation.ranked_lists import tie_ordered_top
from harness.evaluation.reference_rule import excluded_items
from harness.evaluation.validate import check_embeddings

TOP = 10


def _hard_target_rank(counts, hard: torch.Tensor, present: torch.Tensor, tie_rule: str) -> list[int | None]:
    ranks = ranks_with_ties(*counts, hard, tie_rule)
    if ranks.shape[1] == 0:
        return [None] * len(ranks)
    return [int(r) + 1 if ok else None for r, ok in zip(ranks[:, 0].tolist(), present.tolist())]


def cirr_records(data, emb, convention: str, tie_rule: str, reference: str = "remove", top: int = TOP) -> list[dict]:
    """One record per query of a CIRR-protocol split (see the module docstring)."""
    check_embeddings(data, emb, methods_of(emb))
    ids = emb.gallery_ids
    labels = build_labels(data.queries, {g: i for i, g in enumerate(ids)}, excluded_items(data.queries, reference))
    has_target = labels.hard[:, 0] > 0 if labels.hard.shape[1] else torch.zeros(len(data.queries), dtype=torch.bool)
    in_subset = has_target & (labels.member_positives[:, 0] >= 0) if labels.hard.shape[1] else has_target
    records = [{"pair_id": q.pair_id, "caption": q.caption, "reference": q.reference, "target": q.target,
                "methods": {}} for q in data.queries]
    for method, attr in methods_of(emb).items():
        query = getattr(emb, attr)
        gallery_counts, subset_counts = cirr_counts(query, emb.gallery, labels, emb.gallery_offset)
        values = query_values_from_counts(gallery_counts, subset_counts, labels, convention, tie_rule)
        target_rank = _hard_target_rank(gallery_counts, labels.hard, has_target, tie_rule)
        subset_rank = _hard_target_rank(subset_counts, labels.hard, in_subset, tie_rule)
        scores, index = tie_ordered_top(query, emb.gallery, min(top, len(ids) - 1), labels.reference,
                                        labels.positives, recall_labels_of(labels, convention), tie_rule,
                                        gallery_counts, emb.gallery_offset)
        value_rows = {name: v.tolist() for name, v in values.items()}
        for i, record in enumerate(records):
            record["methods"][method] = {
                "target_rank": target_rank[i], "subset_rank": subset_rank[i],
                "top": [ids[j] for j in index[i].tolist()], "top_scores": [round(s, 6) for s in scores[i].tolist()],
                "values": {name: v[i] for name, v in value_rows.items()},
            }
    return records


def write_records(path: Path, records: list[dict]) -> Path:
    return write_text(path, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))


def read_values(path: Path) -> tuple[list, dict[str, dict[str, torch.Tensor]]]:
    """(pair ids, {method: {metric: (Q,) values}}) from a per-query file."""
    lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not lines:
        raise HarnessError(f"{path}: no queries in this per-query file")
    values = {method: {name: torch.tensor([r["methods"][method]["values"][name] for r in lines],
                                          dtype=torch.float64)
                       for name in m["values"]}
              for method, m in lines[0]["methods"].items()}
    return [r["pair_id"] for r in lines], values


def paired_values(path_a: Path, path_b: Path, method: str) -> tuple[dict, dict]:
    """The same method's per-query values in two runs, aligned by pair id (two runs
    of one split: every pair id in both, or an error naming what differs)."""
    ids_a, values_a = read_values(path_a)
    ids_b, values_b = read_values(path_b)
    if sorted(map(str, ids_a)) != sorted(map(str, ids_b)):
        raise HarnessError(f"{path_a} and {path_b} do not hold the same queries ({len(ids_a)} vs {len(ids_b)} "
                           "pair ids): pair only runs of the same split")
    order = {p: i for i, p in enumerate(ids_b)}
    align = torch.tensor([order[p] for p in ids_a])
    return values_a[method], {name: v[align] for name, v in values_b[method].items()}
