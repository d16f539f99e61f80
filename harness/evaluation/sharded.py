"""Scoring a gallery split across ranks (torchrun): each rank holds the queries and
one contiguous shard of the gallery, counts its shard against every positive, and
the counts are summed; top-K lists are merged. The result is one process's.
(harness/evaluation/shard_scoring.py hands the shards out during a run;
harness/evaluation/sharded_mixed.py does the same for the mixed sweep's counts.)

What makes it one process's, not merely close:
- every positive's score is computed on every rank from the same rows by the same
  call (the positive rows are gathered first), so the thresholds are the same bits;
- duplicate rows (coir_kernels/duplicates.py) are found over the whole gallery: row
  hashes are gathered, rows whose hash repeats anywhere are gathered in full and
  grouped, and every rank scores each group from the same first rows, so a copy
  of a positive on another shard still ties with it;
- the counts follow the implementation one process picks: `target_rank_counts`
  counts as the two-stage kernel does (every near-tie rescored exactly, so its
  counts do not depend on the shard), `tiled_rank_counts` as the fp32 reference
  does (each item's fp32 GEMM score against the positive's);
- top-K candidates are merged by (score descending, gallery index ascending), the
  order a single process breaks ties in.
The fp32 reference's counts and top-K read GEMM scores of the shard's rows: they are
one process's where the GEMM gives a row's score the same bits whichever rows share
the product (MKL on the CPUs we test; tests/test_sharded_scoring.py), and may differ
elsewhere only at fp32 near-ties (coir_kernels/__init__.py).

`group`: the process group of the collectives (None: the default group).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from coir_kernels import duplicates, gemm, reference, two_stage


def shard_bounds(size: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of this rank's contiguous shard of `size` rows."""
    step = -(-size // world)
    return min(size, rank * step), min(size, (rank + 1) * step)


def _gather_cat(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """Concatenation over ranks of tensors whose first dimension may differ."""
    parts: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, tensor.cpu(), group=group)
    return torch.cat(parts).to(tensor.device)


def global_copies(shard: torch.Tensor, offset: int, total: int, group=None) -> reference.Copies:
    """The shard's duplicate groups in gallery-wide numbering, with every group's
    first row (the same on every rank)."""
    rows = shard.reshape(shard.shape[0], -1)
    hashes = _gather_cat(duplicates._candidate_hash(rows), group)  # (G,) in gallery order
    values, counts = torch.unique(hashes, return_counts=True)
    repeated = torch.isin(hashes, values[counts > 1])
    local = torch.nonzero(repeated[offset : offset + shard.shape[0]]).squeeze(1)
    index = _gather_cat(local + offset, group)
    candidates = _gather_cat(shard[local].float(), group)
    order = torch.argsort(index)
    index, candidates = index[order], candidates[order]
    groups = duplicates.find(candidates) if len(index) > 1 else None
    if groups is None:
        return reference.Copies(None, None)
    group_of = torch.full((total,), -1, dtype=torch.long)
    group_of[index] = groups.group
    mine = group_of[offset : offset + shard.shape[0]].clone()
    return reference.Copies(duplicates.Groups(group=mine, first=index[groups.first] - offset),
                            None, first_rows=candidates[groups.first])


def positive_rows(shard: torch.Tensor, offset: int, positives: torch.Tensor, group=None) -> torch.Tensor:
    """Every positive's gallery row (zeros for padding), on every rank: summed from
    the rank that holds it (x + 0 = x exactly)."""
    here = (positives >= offset) & (positives < offset + shard.shape[0])
    rows = torch.zeros(*positives.shape, *shard.shape[1:], dtype=torch.float32)
    rows[here] = shard[positives[here] - offset].float()
    dist.all_reduce(rows, group=group)
    return rows


def group_of_every_item(copies: reference.Copies, group=None) -> torch.Tensor | None:
    """(G,) each gallery item's duplicate group (-1: none), on every rank; None without copies."""
    return _gather_cat(copies.groups.group, group) if copies.groups is not None else None


def own_scores(query: torch.Tensor, rows: torch.Tensor, positives: torch.Tensor, group_scores,
               everywhere: torch.Tensor | None) -> torch.Tensor:
    """(Q, P) each positive's score (nan: padding) from its gathered `rows` (Q, P, ...),
    or its duplicate group's score: the bits one process gives it."""
    own = torch.full(positives.shape, float("nan"))
    for p in range(positives.shape[1]):
        live = positives[:, p] >= 0
        score = reference.rowwise_similarity(query, rows[:, p])
        if everywhere is not None:  # a positive with copies takes its group's score
            group = everywhere[positives[:, p].clamp(min=0)]
            member = torch.nonzero(live & (group >= 0)).squeeze(1)
            score[member] = group_scores[member, group[member]]
        own[:, p] = torch.where(live, score, torch.full_like(score, float("nan")))
    return own


def local_index(index: torch.Tensor, offset: int, size: int) -> torch.Tensor:
    """Gallery indices as indices into the shard [offset, offset + size); -1 elsewhere."""
    inside = (index >= offset) & (index < offset + size)
    return torch.where(inside, index - offset, torch.full_like(index, -1))


def _shared(query, shard, offset, total, positives, group):
    """(fp32 queries, the global copies, every positive's score), the same on every rank."""
    copies = global_copies(shard, offset, total, group)
    q32 = query.float()
    own = own_scores(q32, positive_rows(shard, offset, positives, group), positives, copies.scores(q32),
                     group_of_every_item(copies, group))
    return q32, copies, own


def target_rank_counts(query: torch.Tensor, shard: torch.Tensor, offset: int, total: int,
                       positives: torch.Tensor, exclude: torch.Tensor, dtype: torch.dtype = torch.float32,
                       group=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`coir_kernels.target_rank_counts` of the whole gallery as the two-stage kernel
    counts it (scored in `dtype`), this rank holding rows [offset, offset + len(shard)):
    every rank returns the same summed counts."""
    q32, copies, own = _shared(query, shard, offset, total, positives, group)
    size = shard.shape[0]
    greater, equal, _ = two_stage.counts_against(q32, shard, local_index(positives, offset, size),
                                                 local_index(exclude, offset, size), copies, own, dtype)
    dist.all_reduce(greater, group=group)
    dist.all_reduce(equal, group=group)
    return greater, equal, own


def tiled_rank_counts(query: torch.Tensor, shard: torch.Tensor, offset: int, total: int,
                      positives: torch.Tensor, exclude: torch.Tensor, group=None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`coir_kernels.target_rank_counts` of the whole gallery as the fp32 reference counts
    single vectors (each item's GEMM score against the positive's, tile by tile)."""
    q32, copies, own = _shared(query, shard, offset, total, positives, group)
    g32, size = shard.float(), shard.shape[0]
    pos, skip = local_index(positives, offset, size), local_index(exclude, offset, size)
    greater = torch.zeros(positives.shape, dtype=torch.int64)
    at_least = torch.zeros_like(greater)
    plan = gemm.plan_for(query.shape[0], total, query.shape[-1])  # one process's GEMM and tiles: its bits
    step = reference.QUERY_TILE or plan.query_rows
    for start in range(0, query.shape[0], step):
        rows = slice(start, start + step)
        above, ge, _ = reference.tiled_counts(q32[rows], g32, pos[rows], skip[rows], copies, own=own[rows],
                                              plan=plan)
        greater[rows], at_least[rows] = above, ge
    dist.all_reduce(greater, group=group)
    dist.all_reduce(at_least, group=group)
    pad = torch.isnan(own)
    return greater.masked_fill(pad, 0), (at_least - greater).masked_fill(pad, 0), own


def topk_excluding(query: torch.Tensor, shard: torch.Tensor, offset: int, total: int, k: int,
                   exclude: torch.Tensor, group=None) -> tuple[torch.Tensor, torch.Tensor]:
    """`coir_kernels.topk_excluding` of the whole gallery from the shards: each rank's top k
    in gallery-wide indices, merged by (score descending, index ascending)."""
    copies = global_copies(shard, offset, total, group)
    skip = local_index(exclude, offset, shard.shape[0])
    k_here = min(k, shard.shape[0] - (1 if bool((skip >= 0).any()) else 0))
    scores, index = reference.topk_excluding(query, shard, max(k_here, 0), skip, copies=copies)
    scores = _gather_columns(scores, group)
    index = _gather_columns(index + offset, group)
    k = min(k, total - (1 if bool((exclude >= 0).any()) else 0))
    # by index first, then a stable sort by score: equal scores stay in gallery order
    by_index = torch.argsort(index, dim=1, stable=True)
    scores, index = scores.gather(1, by_index), index.gather(1, by_index)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return scores.gather(1, order), index.gather(1, order)


def _gather_columns(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """(Q, k_r) from every rank side by side: (Q, sum of k_r)."""
    parts: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, tensor.cpu(), group=group)
    return torch.cat(parts, 1)
