"""The contract of a mixing adapter (one per scoring protocol), its registry, and
the pieces every adapter counts with.

An adapter knows two things about its protocol (harness/evaluation/protocols):
- which query blocks rank against which gallery columns (rows, columns, positives,
  the excluded item), so that `coir_kernels.mixed_rank_counts` gives the rank counts
  (W, Q, P) of every weight triple in one pass (through
  harness/evaluation/shard_scoring.py: over the ranks' gallery shards under torchrun);
- how the protocol turns rank counts into each query's metric values and into its
  metrics, so that a sweep entry is what the protocol's own `query_values` and
  `evaluate` give for that triple's mixed query (harness/mixing/sweep.py scores the
  direct rows through them).

    mixer = MIXERS.get(protocol_name)
    data, emb = mixer.merge(data, emb)                    # one query per annotation
    names = mixer.metrics(part)                           # the protocol's metrics, in its order
    metrics, values = mixer.sweep(part, weights, rules)   # {metric: [W]}, {metric: (W, Q)}
"""

from __future__ import annotations

from typing import Protocol

import torch

import coir_kernels
from harness.core.registry import Registry
from harness.evaluation import candidate_galleries as cg
from harness.evaluation import shard_scoring
from harness.evaluation.metrics import Counts, percent, ranks_with_ties
from harness.evaluation.protocols.base import ScoringRules


class Mixer(Protocol):
    name: str  # the scoring protocol it mixes for (harness/evaluation/protocols)
    panels: tuple[str, ...]  # the metrics its heat-map shows by default (harness/mixing/heatmap.py)

    def merge(self, data, emb): ...  # (data, emb) with one query per annotation, as the protocol scores them

    def metrics(self, part) -> list[str]: ...

    def sweep(self, part, weights: torch.Tensor, rules: ScoringRules
              ) -> tuple[dict[str, list[float]], dict[str, torch.Tensor]]: ...


MIXERS: Registry[Mixer] = Registry("mixing protocol")


def unmerged(data, emb):
    """`merge` of a protocol that scores every query as it is."""
    return data, emb


def lifted(gallery: torch.Tensor) -> torch.Tensor:
    """The gallery (G, D) as (G, D + 1) rows of one norm c (the largest row norm):
    the extra coordinate sqrt(c^2 - |g|^2) meets the queries' zero.

    `coir_kernels.mixed_rank_counts` L2-normalises the gallery it is given. The protocols
    score the gallery as it is: under mean token pooling its rows are token means,
    NOT re-normalised (harness/evaluation/token_pooling.py), so their norms are part
    of every score and normalising them would rank differently. Normalising the
    lifted rows divides every score by the same c instead, which changes no ranking
    (up to fp32 rounding, the near-ties the kernels' docstring sets aside)."""
    rows = gallery.float()
    squares = rows.pow(2).sum(-1)
    extra = (squares.max() - squares).clamp(min=0).sqrt()
    return torch.cat([rows, extra[:, None]], dim=1)


def extended(parts) -> tuple[torch.Tensor, ...]:
    """The query parts with a zero coordinate, to meet the `lifted` gallery's extra one."""
    return tuple(torch.cat([p.float(), p.new_zeros(p.shape[0], 1, dtype=torch.float32)], dim=1) for p in parts)


def mixed_counts(parts, gallery: torch.Tensor, weights: torch.Tensor, positives: torch.Tensor,
                 exclude: torch.Tensor) -> Counts:
    """(greater, equal, positive scores), each (W, Q, P): the rank counts of every
    positive for the mixed query of every triple, against `gallery` as it is scored."""
    return shard_scoring.mixed_rank_counts(extended(parts), lifted(gallery), weights, positives, exclude)


def candidate_hits(part, weights: torch.Tensor, setting: cg.SettingLabels, tie_rule: str,
                   ks) -> dict[int, torch.Tensor]:
    """{K: (W, Q) hits} of every triple's mixed query within each query's own candidates
    (per-query galleries: harness/evaluation/candidate_galleries.py), as the protocols
    count them: `coir_kernels.candidate_mixed_rank_counts` on the lifted gallery, the
    triples stacked along the query axis for the hit rule."""
    counts = coir_kernels.candidate_mixed_rank_counts(extended(part.parts), lifted(part.gallery), weights,
                                                      setting.candidates, setting.positives, setting.exclude)
    stacked = cg.SettingLabels(setting.candidates, setting.positives, setting.labels.repeat(weights.shape[0], 1),
                               setting.exclude, setting.kept)
    hits = cg.hits_from_counts(flat(counts), stacked, tie_rule, ks)
    return {k: hits[k].reshape(counts[0].shape[:-1]) for k in ks}


def flat(counts: Counts) -> Counts:
    """(W, Q, P) counts as (W * Q, P): the triples stacked along the query axis, so
    every rule applies as it does for one set of queries."""
    return tuple(c.reshape(-1, c.shape[-1]) for c in counts)  # type: ignore[return-value]


def variant_ranks(counts: Counts, labels: torch.Tensor, tie_rule: str) -> torch.Tensor:
    """Candidates placed before each positive, (W * Q, P), for (W, Q, P) counts and
    the labels (Q, P) of one set of queries (harness.evaluation.metrics.ranks_with_ties)."""
    variants = counts[0].shape[0]
    return ranks_with_ties(*flat(counts), labels.repeat(variants, 1), tie_rule)


def percents(values: torch.Tensor) -> list[float]:
    """100 x the mean of each triple's row (W, Q), one row at a time as the protocols
    compute one metric (harness.evaluation.metrics.percent), so the numbers are theirs."""
    return [percent(row.contiguous()).item() for row in values]
