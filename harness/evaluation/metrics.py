"""CIRR-protocol metrics: Recall@K over the gallery, Recall_subset@K within the
query's image set, and Avg = (R@5 + Rsubset@1) / 2.

Every metric is computed from the rank of each positive (how many candidates are
placed before it), never from a full sort. A positive is a gallery item with a
label > 0 for the query; a query's value at K is the best label among its
positives ranked within the first K (0 if none), and Recall@K is the mean value
in percent. With the hard target as the only positive (label 1) this is the usual
"target within the first K".

Scoring conventions (they differ on real CIRR val: 37 hard targets are absent
from target_soft and 3 carry a soft label of -1):
- "covr" (default; CoVR's and CoVR-2's code, src/test/blip/cirr_val.py): Recall@K
  counts a hit on target_hard; Recall_subset@K takes the best soft label among hits.
- "clip4cir" (CLIP4Cir's compute_cirr_val_metrics): both count a hit on target_hard.
- "cirplant" (the official CIRR evaluation): both take the best soft label among
  hits, negative labels counting 0.

Tie rules (a candidate scoring exactly the same as a positive):
- "pessimistic" (default): ties are placed before the positive unless they carry a
  higher label, so equal scores never help.
- "optimistic": ties are placed after the positive unless they carry a higher label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

import coir_kernels
from harness.evaluation import reference_rule, shard_scoring
from harness.suites import Query

CONVENTIONS = ("covr", "clip4cir", "cirplant")
TIE_RULES = ("pessimistic", "optimistic")
RECALL_KS = (1, 5, 10, 50)
SUBSET_KS = (1, 2, 3)
CIRR_METRICS = [f"R@{k}" for k in RECALL_KS] + [f"Rsubset@{k}" for k in SUBSET_KS] + ["Avg"]


def ranks_with_ties(
    greater: torch.Tensor,
    equal: torch.Tensor,
    pos_scores: torch.Tensor,
    labels: torch.Tensor,
    tie_rule: str,
) -> torch.Tensor:
    """Candidates placed before each positive, (Q, P), from the rank counts.

    `equal` counts every tied candidate, positives included; ties between
    positives are settled by their labels, so the rule applies to label order.
    """
    if tie_rule not in TIE_RULES:
        raise ValueError(f"tie_rule must be one of {TIE_RULES}, got {tie_rule!r}")
    real = ~torch.isnan(pos_scores)
    tied = (pos_scores[:, :, None] == pos_scores[:, None, :]) & real[:, None, :]
    tied &= ~torch.eye(pos_scores.shape[1], dtype=torch.bool, device=tied.device)
    label_j, label_k = labels[:, :, None], labels[:, None, :]
    if tie_rule == "pessimistic":
        tied_positives = tied.sum(-1)
        before = (equal - tied_positives) + (tied & (label_k <= label_j)).sum(-1)
    else:
        before = (tied & (label_k > label_j)).sum(-1)
    # Padding never ranks: put it past every cut-off.
    return torch.where(real, greater + before, torch.iinfo(greater.dtype).max)


def values_at(ranks: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Best label among positives ranked within the first k, per query (0 if none)."""
    hits = torch.where(ranks < k, labels, torch.zeros_like(labels))
    return hits.max(dim=1).values.clamp(min=0) if labels.shape[1] else labels.new_zeros(len(labels))


def percent(values: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """100 x the mean along dim, in float64 from the exact sum: 76 hits of 600 give
    12.666666666666666, as 7600 / 600 does (not float32's 12.666666507720947)."""
    return 100.0 * values.double().sum(dim) / values.shape[dim]


def recalls(ranks: torch.Tensor, labels: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    return {k: percent(values_at(ranks, labels, k)).item() for k in ks}


Counts = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # greater, equal, positive scores


@dataclass(frozen=True)
class QueryLabels:
    """Per-query positives as padded tensors, in gallery and in image-set coordinates."""

    reference: torch.Tensor  # (Q,) gallery index of the item removed from the ranking (the reference), -1 none
    positives: torch.Tensor  # (Q, P) gallery indices, -1 pad
    hard: torch.Tensor  # (Q, P) float64, 1 for target_hard, else 0
    soft: torch.Tensor  # (Q, P) float64, max(target_soft label, 0)
    members: torch.Tensor  # (Q, M) gallery indices of img_set members
    member_positives: torch.Tensor  # (Q, P) index into members, -1 pad


def build_labels(queries: Sequence[Query], gallery_index: dict[str, int],
                 excluded: Sequence[str | None] | None = None) -> QueryLabels:
    """Labels of every query; `excluded` is the gallery item taken out of each query's
    ranking (harness/evaluation/reference_rule.py; by default its reference, None for
    nothing): a positive that is that item is a miss. Labels are float64, so a soft
    label of 0.2 counts as 0.2, not float32's 0.20000000298."""
    if excluded is None:
        excluded = reference_rule.excluded_items(queries, "remove")
    rows = []
    for q, removed in zip(queries, excluded, strict=True):
        labels = {gid: max(v, 0.0) for gid, v in q.target_soft.items() if v > 0}
        pos_ids = ([q.target] if q.target is not None else []) + [g for g in labels if g != q.target]
        pos_ids = [g for g in pos_ids if g != removed]
        rows.append((q, pos_ids, labels))
    width = max((len(p) for _, p, _ in rows), default=0)
    members_width = max((len(q.members) for q in queries), default=0)
    n = len(queries)
    positives = torch.full((n, width), -1, dtype=torch.long)
    member_positives = torch.full((n, width), -1, dtype=torch.long)
    hard = torch.zeros(n, width, dtype=torch.float64)
    soft = torch.zeros(n, width, dtype=torch.float64)
    members = torch.full((n, members_width), -1, dtype=torch.long)
    reference = reference_rule.excluded_indices(excluded, gallery_index)
    for i, (q, pos_ids, labels) in enumerate(rows):
        members[i, : len(q.members)] = torch.tensor([gallery_index[m] for m in q.members])
        for j, gid in enumerate(pos_ids):
            positives[i, j] = gallery_index[gid]
            hard[i, j] = 1.0 if gid == q.target else 0.0
            soft[i, j] = labels.get(gid, 0.0)
            if gid in q.members:
                member_positives[i, j] = q.members.index(gid)
    return QueryLabels(reference, positives, hard, soft, members, member_positives)


def cirr_counts(query_emb: torch.Tensor, gallery_emb: torch.Tensor, labels: QueryLabels,
                offset: torch.Tensor | None = None) -> tuple[Counts, Counts]:
    """(gallery counts, image-set counts) of every positive: what every CIRR metric
    and rank is computed from. `offset` (G,): added to each item's score (a similarity
    method's per-item correction, harness/similarity), in the gallery and in the image set."""
    gallery_counts = shard_scoring.target_rank_counts(
        query_emb, gallery_emb, labels.positives, labels.reference, offset=offset
    )
    subset_scores, subset_valid = subset_scores_of(query_emb, gallery_emb, labels, offset)
    subset_counts = coir_kernels.reference.rank_counts_dense(
        subset_scores, subset_valid, labels.member_positives
    )
    return gallery_counts, subset_counts


def cirr_query_values(
    query_emb: torch.Tensor,
    gallery_emb: torch.Tensor,
    labels: QueryLabels,
    convention: str = "covr",
    tie_rule: str = "pessimistic",
    offset: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Each query's value (Q,) for every CIRR metric: a metric is 100 x their mean
    (harness/evaluation/intervals.py resamples them); `offset` as in `cirr_counts`."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    gallery_counts, subset_counts = cirr_counts(query_emb, gallery_emb, labels, offset)
    return query_values_from_counts(gallery_counts, subset_counts, labels, convention, tie_rule)


def cirr_metrics(
    query_emb: torch.Tensor,
    gallery_emb: torch.Tensor,
    labels: QueryLabels,
    convention: str = "covr",
    tie_rule: str = "pessimistic",
) -> dict[str, float]:
    """R@{1,5,10,50}, Rsubset@{1,2,3} and Avg for composed (or baseline) queries."""
    values = cirr_query_values(query_emb, gallery_emb, labels, convention, tie_rule)
    return {name: v[0] for name, v in means(values).items()}


def query_values_from_counts(
    gallery_counts: Counts,
    subset_counts: Counts,
    labels: QueryLabels,
    convention: str = "covr",
    tie_rule: str = "pessimistic",
) -> dict[str, torch.Tensor]:
    """Each query's value for every CIRR metric, from given rank counts, without
    scoring anything: {metric: (Q,) values}, or (W, Q) for W query variants.

    `gallery_counts` are `coir_kernels.target_rank_counts` over the gallery (positives
    `labels.positives`, reference excluded); `subset_counts` are `rank_counts_dense`
    within the image set (positives `labels.member_positives`). Each is (Q, P), or
    (W, Q, P) for W query variants at once (the weight triples of a mixing sweep).
    Avg's value is (R@5 + Rsubset@1) / 2 of the query.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    recall_labels = recall_labels_of(labels, convention)
    subset_labels = labels.hard if convention == "clip4cir" else labels.soft
    values = {
        **{f"R@{k}": v for k, v in _variant_values(gallery_counts, recall_labels, tie_rule, RECALL_KS).items()},
        **{f"Rsubset@{k}": v for k, v in _variant_values(subset_counts, subset_labels, tie_rule, SUBSET_KS).items()},
    }
    values["Avg"] = (values["R@5"] + values["Rsubset@1"]) / 2
    return values


def recall_labels_of(labels: QueryLabels, convention: str) -> torch.Tensor:
    """The labels Recall@K counts under `convention`: the soft ones for cirplant, else target_hard."""
    return labels.soft if convention == "cirplant" else labels.hard


def means(values: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """{metric: [percent per variant]} from per-query values (Q,) or (W, Q); Avg is
    the mean of the two percentages, as the papers compute it."""
    out = {name: percent(v.reshape(-1, v.shape[-1]), dim=1).tolist() for name, v in values.items()}
    if "Avg" in out:
        out["Avg"] = [(a + b) / 2 for a, b in zip(out["R@5"], out["Rsubset@1"])]
    return out


def metrics_from_counts(
    gallery_counts: Counts,
    subset_counts: Counts,
    labels: QueryLabels,
    convention: str = "covr",
    tie_rule: str = "pessimistic",
) -> dict[str, list[float]]:
    """Every CIRR metric from given rank counts (see `query_values_from_counts`):
    {metric: [value per variant]} (one value for (Q, P) counts)."""
    return means(query_values_from_counts(gallery_counts, subset_counts, labels, convention, tie_rule))


def _variant_values(
    counts: Counts, labels: torch.Tensor, tie_rule: str, ks: Sequence[int]
) -> dict[int, torch.Tensor]:
    """`values_at` for (Q, P) counts or each of W variants in (W, Q, P) counts, shaped
    like the counts without P: the variants are stacked along the query axis, so every
    rule is applied as it is for one set of queries."""
    greater, equal, pos_scores = counts
    variants = greater.shape[0] if greater.ndim == 3 else 1
    num_queries = labels.shape[0]
    flat = [c.reshape(variants * num_queries, c.shape[-1]) for c in (greater, equal, pos_scores)]
    stacked_labels = labels.repeat(variants, 1)
    ranks = ranks_with_ties(*flat, stacked_labels, tie_rule)
    shape = greater.shape[:-1]
    return {k: values_at(ranks, stacked_labels, k).double().reshape(shape) for k in ks}


def subset_scores_of(
    query_emb: torch.Tensor, gallery_emb: torch.Tensor, labels: QueryLabels, offset: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of each query against its own img_set members (Q, M), plus each member's
    `offset` where given, and which members take part (not padding, not the reference)."""
    members = labels.members.clamp(min=0)
    scores = torch.stack(
        [coir_kernels.reference.rowwise_similarity(query_emb, gallery_emb[members[:, m]])
         for m in range(members.shape[1])],
        dim=1,
    ) if members.shape[1] else torch.empty(members.shape)
    if offset is not None and members.shape[1]:
        scores = scores + offset.float()[members]
    valid = (labels.members >= 0) & (labels.members != labels.reference[:, None])
    return scores, valid
