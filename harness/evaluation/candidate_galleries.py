"""A split's per-query candidate galleries (`SplitData.candidates`), scored through
the retrieval core's candidate operations (coir_kernels/candidates.py) from one pool
embedding: every setting (EgoCVR's `global` and `local`) reads the same gallery
tensor, so a suite reports all its settings from one embedding pass.

A query's positives are all its correct targets (`Query.ground_truths`, else its
`target`), label 1 each; its hit at K is 1 when any of them is within the first K of
its own candidates (ties by the run's tie rule), as EgoCVR counts a query
(egocvr_retrieval.py line 300: min(|relevant ∩ retrieved|, 1)). A target that is not
among the query's candidates, or is its removed reference, is a miss.

A query whose candidates that take part (its removed reference not counted) number
fewer than `min_gallery` is left out of that setting's metric, which then averages
over the others, as EgoCVR skips it (lines 273-275, --min_gallery_size 2, line 91)
and divides by the queries it kept (lines 299-302). Its per-query value is 0 and the
others' are scaled by Q / kept, so that the mean over all Q queries (what the
bootstrap resamples, harness/evaluation/intervals.py) is the metric.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import coir_kernels
from coir_kernels import Candidates
from harness.core.errors import HarnessError
from harness.evaluation.metrics import ranks_with_ties, values_at
from harness.evaluation.reference_rule import excluded_indices, excluded_items
from harness.suites import SplitData


@dataclass(frozen=True)
class SettingLabels:
    """One setting's candidates and what its ranking counts, in gallery rows."""

    candidates: Candidates
    positives: torch.Tensor  # (Q, P) gallery rows of every correct target, -1 pad
    labels: torch.Tensor  # (Q, P) float64, 1 for a target, 0 for padding
    exclude: torch.Tensor  # (Q,) the removed reference's row, -1 for none
    kept: torch.Tensor  # (Q,) bool: the query has enough candidates to be counted


def settings_of(data: SplitData) -> list[str]:
    if not data.candidates:
        raise HarnessError(f"{data.suite}/{data.split} gives no per-query candidate galleries")
    return list(data.candidates)


def candidates_of(data: SplitData, setting: str) -> Candidates:
    """The setting's candidate rows (positions in `data.gallery`), None rows the whole pool."""
    rows = data.candidates[setting]
    if len(rows) != len(data.queries):
        raise HarnessError(f"{data.suite}/{data.split}: {len(rows)} {setting} galleries for "
                           f"{len(data.queries)} queries")
    try:
        return Candidates.from_lists(rows, len(data.gallery))
    except ValueError as err:
        raise HarnessError(f"{data.suite}/{data.split}, {setting} galleries: {err}") from err


def setting_labels(data: SplitData, setting: str, reference: str, min_gallery: int) -> SettingLabels:
    index = {g: i for i, g in enumerate(data.gallery)}
    targets = [q.ground_truths or ((q.target,) if q.target is not None else ()) for q in data.queries]
    width = max((len(t) for t in targets), default=0)
    positives = torch.full((len(targets), width), -1, dtype=torch.long)
    for i, row in enumerate(targets):
        positives[i, : len(row)] = torch.tensor([index.get(t, -1) for t in row], dtype=torch.long)
    candidates = candidates_of(data, setting)
    exclude = excluded_indices(excluded_items(data.queries, reference), index)
    kept = taking_part(candidates, exclude) >= min_gallery
    return SettingLabels(candidates, positives, (positives >= 0).double(), exclude, kept)


def taking_part(candidates: Candidates, exclude: torch.Tensor) -> torch.Tensor:
    """(Q,) each query's candidates, its excluded item not counted."""
    return candidates.sizes() - candidates.contains(exclude).long()


def hits_from_counts(counts, setting: SettingLabels, tie_rule: str, ks) -> dict[int, torch.Tensor]:
    """{K: (Q,) 1.0 where a target is within the first K of the query's candidates}."""
    ranks = ranks_with_ties(*counts, setting.labels, tie_rule)
    return {k: values_at(ranks, setting.labels, k).double() for k in ks}


def setting_hits(query: torch.Tensor, gallery: torch.Tensor, setting: SettingLabels, tie_rule: str, ks,
                 offset: torch.Tensor | None = None) -> tuple[dict[int, torch.Tensor], tuple]:
    """({K: (Q,) hits}, the rank counts) of one query tensor in one setting."""
    counts = coir_kernels.candidate_rank_counts(query, gallery, setting.candidates, setting.positives,
                                                setting.exclude, offset=offset)
    return hits_from_counts(counts, setting, tie_rule, ks), counts


def best_rank(counts, setting: SettingLabels, tie_rule: str) -> list[int | None]:
    """Each query's best target's 1-based place among its candidates (None: none reachable)."""
    ranks = ranks_with_ties(*counts, setting.labels, tie_rule)
    if ranks.shape[1] == 0:
        return [None] * len(ranks)
    best = ranks.min(dim=1).values
    unreachable = torch.iinfo(ranks.dtype).max
    return [int(r) + 1 if r != unreachable else None for r in best.tolist()]


def recall(hits: torch.Tensor, kept: torch.Tensor) -> float:
    """100 x the hits over the kept queries (0 when none is kept, as EgoCVR's line 302)."""
    count = int(kept.sum())
    return 100.0 * float(hits[kept].sum()) / count if count else 0.0


def query_shares(hits: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Per-query values whose mean over all queries is `recall` / 100 (module docstring)."""
    count = int(kept.sum())
    scale = hits.shape[-1] / count if count else 0.0  # Q, also for (W, Q) hits
    return torch.where(kept, hits * scale, torch.zeros_like(hits))
