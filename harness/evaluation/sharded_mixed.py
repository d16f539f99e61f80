"""The mixing sweep's rank counts (`coir_kernels.mixed_rank_counts`) of a gallery split
across ranks: each rank counts its contiguous shard for every weight triple, the
counts are summed over ranks, and every rank returns one process's (W, Q, P) counts.

It follows the implementation one process picks, step for step:
- `impl="two-stage"` (coir_kernels/two_stage.py `mixed_rank_counts`): the three score
  blocks in low precision, items settled by the error bound, the others rescored
  exactly against each positive's three exact scores (gathered: the same bits on
  every rank); where one process finds a column's unsettled items past
  DENSE_BAND_MIXED of the gallery and hands the remaining rows to the reference, the
  ranks sum their unsettled items first and take the same decision together;
- `impl="reference"` (coir_kernels/reference.py `mixed_rank_counts`): each item's
  three fp32 GEMM scores minus the positive's, the positive's read from the GEMM of
  the rank that holds it and shared.
Duplicate rows are grouped over the whole gallery as for plain counts
(harness/evaluation/sharded.py `global_copies`), their first rows normalised as one
process normalises the gallery (row by row: the same bits in any shard).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from coir_kernels import counting, reference, two_stage
from harness.evaluation import sharded

Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # greater, equal, positive scores: (W, Q, P)


@dataclass
class _Shard:
    """This rank's normalised rows [offset, offset + len(g)) of a gallery of `total`
    rows, its copies (first rows normalised) and every item's group (None: no copies)."""

    g: torch.Tensor
    offset: int
    total: int
    copies: reference.Copies
    everywhere: torch.Tensor | None
    group: object

    def local(self, index: torch.Tensor) -> torch.Tensor:
        return sharded.local_index(index, self.offset, self.g.shape[0])


def mixed_rank_counts(parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor], shard: torch.Tensor, offset: int,
                      total: int, weights: torch.Tensor, positives: torch.Tensor, exclude: torch.Tensor,
                      impl: str, group=None) -> Outputs:
    """`coir_kernels.mixed_rank_counts(parts, gallery, weights, positives, exclude)` of the
    whole gallery, this rank holding rows [offset, offset + len(shard)), counted as
    `impl` ("two-stage" or "reference") counts them."""
    qtf = tuple(F.normalize(p.float(), dim=-1) for p in parts)
    copies = sharded.global_copies(shard, offset, total, group)
    if copies.groups is not None:  # the groups' first rows as one process has them: normalised
        copies = reference.Copies(copies.groups, None, first_rows=F.normalize(copies.first_rows, dim=-1))
    mine = _Shard(F.normalize(shard.float(), dim=-1), offset, total, copies,
                  sharded.group_of_every_item(copies, group), group)
    w = weights.float()
    shape = (w.shape[0], qtf[0].shape[0], positives.shape[1])
    out = (torch.zeros(shape, dtype=torch.long), torch.zeros(shape, dtype=torch.long),
           torch.full(shape, float("nan")))
    start = 0
    if impl == "two-stage" and not (weights < 0).any() and (weights > 0).any(1).all():
        dtype = two_stage.format_for(shard)
        margin = two_stage.kappa(shard.shape[-1], dtype) * (1 + 2.0**-10) + torch.finfo(torch.float32).tiny
        rows_of = sharded.positive_rows(mine.g, offset, positives, group)
        g_lp = mine.g.to(dtype)
        for start in range(0, qtf[0].shape[0], 256):  # two_stage.mixed_rank_counts' rows_per_chunk
            rows = slice(start, min(start + 256, qtf[0].shape[0]))
            if not _low_precision_chunk(qtf, mine, g_lp, margin, rows_of, positives, exclude, w, rows, out):
                break  # most items unsettled: the reference takes the rows from here, as in one process
        else:
            return out
    _reference_rows(qtf, mine, positives, exclude, w, start, out)
    return out


def _low_precision_chunk(qtf, mine: _Shard, g_lp, margin: float, rows_of, positives, exclude, w, rows: slice,
                         out: Outputs) -> bool:
    """Rows `rows` into `out` as two_stage's `_mixed_chunk` counts them; False (the
    ranks agreeing) when a column's unsettled items exceed DENSE_BAND_MIXED."""
    three = torch.stack([part[rows] for part in qtf])  # (3, R, D)
    blocks = two_stage.low_precision_scores(three.reshape(-1, g_lp.shape[1]).to(g_lp.dtype), g_lp)
    blocks = blocks.view(3, three.shape[1], -1)
    group_scores = [mine.copies.scores(part) for part in three]
    for p in range(positives.shape[1]):
        pos = positives[rows, p]
        live = torch.nonzero(pos >= 0).squeeze(1)
        if len(live) == 0:
            continue
        scores_of = [None if s is None else s[live] for s in group_scores]
        own = torch.stack([sharded.own_scores(three[k][live], rows_of[rows][live, p : p + 1], pos[live, None],
                                              scores_of[k], mine.everywhere)[:, 0] for k in range(3)])  # (3, L)
        d = blocks[:, live].float() - own[:, :, None]  # (3, L, G_shard)
        index = torch.arange(len(live))
        for item in (mine.local(pos[live]), mine.local(exclude[rows][live])):
            has = item >= 0  # the positive and the excluded item take no part
            d[:, index[has], item[has]] = float("nan")
        above_all, below_all = d.amin(0) > margin, d.amax(0) < -margin
        at, item = torch.nonzero(~(above_all | below_all) & ~torch.isnan(d).any(0), as_tuple=True)
        unsettled = torch.tensor([len(at)])
        dist.all_reduce(unsettled, group=mine.group)
        if int(unsettled) > two_stage.DENSE_BAND_MIXED * len(live) * mine.total:
            return False
        exact = torch.stack([two_stage._exact_scores(three[k][live], mine.g, mine.copies, scores_of[k], at, item)
                             for k in range(3)])
        mixed = counting.mixed_scores((exact - own[:, at])[:, None, :], w)[:, 0, :]  # (W, N)
        above = torch.zeros(w.shape[0], len(live), dtype=torch.long)
        at_least = torch.zeros_like(above)
        above.index_add_(1, at, (mixed > 0).long())
        at_least.index_add_(1, at, (mixed >= 0).long())
        settled_above = above_all.sum(1)
        _write(out, rows.start + live, p, (above + settled_above, at_least + settled_above, 0), own, w, mine.group)
    return True


def _reference_rows(qtf, mine: _Shard, positives, exclude, w, first: int, out: Outputs) -> None:
    """Rows `first` ... Q - 1 into `out` as reference.mixed_rank_counts counts them."""
    g, num_queries = mine.g, qtf[0].shape[0]
    step = max(1, min(reference.SWEEP_ROWS, (4 << 20) // (12 * max(1, mine.total))))  # one process's, from all G
    for start in range(first, num_queries, step):
        rows = slice(start, min(start + step, num_queries))
        three = torch.cat([part[rows] for part in qtf])
        blocks = mine.copies.apply(three @ g.T, 0, mine.copies.scores(three)).view(3, -1, g.shape[0])
        skip = mine.local(exclude[rows])
        index = torch.arange(blocks.shape[1])
        for p in range(positives.shape[1]):
            live = index[positives[rows, p] >= 0]
            if len(live) == 0:
                continue
            pos = mine.local(positives[rows, p][live])
            here = torch.nonzero(pos >= 0).squeeze(1)
            own = torch.zeros(3, len(live))
            own[:, here] = blocks[:, live[here], pos[here]]  # the holder's GEMM bits, summed with zeros
            dist.all_reduce(own, group=mine.group)
            differences = blocks[:, live] - own[:, :, None]
            skipped = skip[live]
            at = torch.nonzero(skipped >= 0).squeeze(1)
            differences[:, at, skipped[at]] = float("nan")
            settled = reference._settled_columns(differences, w)
            if settled is None:
                above, at_least = counting.count_mixed_above_zero(differences, w)
            else:
                keep, beaten_by = settled
                above, at_least = counting.count_mixed_above_zero(differences[:, :, keep], w)
                above, at_least = above + beaten_by, at_least + beaten_by
            _write(out, start + live, p, (above, at_least, 1), own, w, mine.group)  # the positive is >= itself


def _write(out: Outputs, rows: torch.Tensor, p: int, counted: tuple[torch.Tensor, torch.Tensor, int],
           own: torch.Tensor, w: torch.Tensor, group) -> None:
    """This shard's counts (above, at least: (W, L)) of column p summed over ranks into
    `out`; the third of `counted`: 1 where the positive's own column counted as at least itself."""
    above, at_least, itself = counted
    dist.all_reduce(above, group=group)
    dist.all_reduce(at_least, group=group)
    greater, equal, pos_scores = out
    greater[:, rows, p] = above
    equal[:, rows, p] = at_least - above - itself
    pos_scores[:, rows, p] = counting.mixed_scores(own[:, :, None], w)[:, :, 0]
