"""Scoring a gallery split across ranks (torchrun): each rank holds the queries and
one contiguous shard of the gallery, counts its shard against every positive, and
the counts are summed; top-K lists are merged. The result is one process's.

What makes it one process's, not merely close:
- every positive's score is computed on every rank from the same rows by the same
  call (the positive rows are gathered first), so the thresholds are the same bits;
- duplicate rows (coir_kernels/duplicates.py) are found over the whole gallery: row
  hashes are gathered, rows whose hash repeats anywhere are gathered in full and
  grouped, and every rank scores each group from the same first rows, so a copy
  of a positive on another shard still ties with it;
- top-K candidates are merged by (score descending, gallery index ascending), the
  order a single process breaks ties in.
Other items differ from a single process's scores only in the last bits of their
fp32 GEMM, which the counts see only at fp32 near-ties (coir_kernels/__init__.py).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from coir_kernels import duplicates, reference, two_stage


def shard_bounds(size: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of this rank's contiguous shard of `size` rows."""
    step = -(-size // world)
    return min(size, rank * step), min(size, (rank + 1) * step)


def _gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenation over ranks of tensors whose first dimension may differ."""
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, tensor.cpu())
    return torch.cat(parts).to(tensor.device)


def global_copies(shard: torch.Tensor, offset: int, total: int) -> reference.Copies:
    """The shard's duplicate groups in gallery-wide numbering, with every group's
    first row (the same on every rank)."""
    rows = shard.reshape(shard.shape[0], -1)
    hashes = _gather_cat(duplicates._candidate_hash(rows))  # (G,) in gallery order
    values, counts = torch.unique(hashes, return_counts=True)
    repeated = torch.isin(hashes, values[counts > 1])
    local = torch.nonzero(repeated[offset : offset + shard.shape[0]]).squeeze(1)
    index = _gather_cat(local + offset)
    candidates = _gather_cat(shard[local].float())
    order = torch.argsort(index)
    index, candidates = index[order], candidates[order]
    groups = duplicates.find(candidates) if len(index) > 1 else None
    if groups is None:
        return reference.Copies(None, None)
    group = torch.full((total,), -1, dtype=torch.long)
    group[index] = groups.group
    mine = group[offset : offset + shard.shape[0]].clone()
    return reference.Copies(duplicates.Groups(group=mine, first=index[groups.first] - offset),
                            None, first_rows=candidates[groups.first])


def _positive_rows(shard: torch.Tensor, offset: int, positives: torch.Tensor) -> torch.Tensor:
    """Every positive's gallery row (zeros for padding), on every rank: summed from
    the rank that holds it (x + 0 = x exactly)."""
    here = (positives >= offset) & (positives < offset + shard.shape[0])
    rows = torch.zeros(*positives.shape, *shard.shape[1:], dtype=torch.float32)
    rows[here] = shard[positives[here] - offset].float()
    dist.all_reduce(rows)
    return rows


def target_rank_counts(query: torch.Tensor, shard: torch.Tensor, offset: int, total: int,
                       positives: torch.Tensor, exclude: torch.Tensor, dtype: torch.dtype = torch.float32
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`coir_kernels.target_rank_counts` of the whole gallery, this rank holding rows
    [offset, offset + len(shard)): every rank returns the same summed counts."""
    copies = global_copies(shard, offset, total)
    pos_rows = _positive_rows(shard, offset, positives)
    q32 = query.float()
    own = torch.full(positives.shape, float("nan"))
    group_scores = copies.scores(q32)
    everywhere = _gather_cat(copies.groups.group) if copies.groups is not None else None
    for p in range(positives.shape[1]):
        live = positives[:, p] >= 0
        score = reference.rowwise_similarity(q32, pos_rows[:, p])
        if everywhere is not None:  # a positive with copies takes its group's score
            group = everywhere[positives[:, p].clamp(min=0)]
            member = torch.nonzero(live & (group >= 0)).squeeze(1)
            score[member] = group_scores[member, group[member]]
        own[:, p] = torch.where(live, score, torch.full_like(score, float("nan")))

    def local(index: torch.Tensor) -> torch.Tensor:
        inside = (index >= offset) & (index < offset + shard.shape[0])
        return torch.where(inside, index - offset, torch.full_like(index, -1))

    greater, equal, _ = two_stage.counts_against(q32, shard, local(positives), local(exclude), copies, own, dtype)
    dist.all_reduce(greater)
    dist.all_reduce(equal)
    return greater, equal, own


def topk_excluding(query: torch.Tensor, shard: torch.Tensor, offset: int, total: int, k: int,
                   exclude: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`coir_kernels.topk_excluding` of the whole gallery from the shards: each rank's top k
    in gallery-wide indices, merged by (score descending, index ascending)."""
    copies = global_copies(shard, offset, total)
    inside = (exclude >= offset) & (exclude < offset + shard.shape[0])
    skip = torch.where(inside, exclude - offset, torch.full_like(exclude, -1))
    k_here = min(k, shard.shape[0] - (1 if bool((skip >= 0).any()) else 0))
    scores, index = reference.topk_excluding(query, shard, max(k_here, 0), skip, copies=copies)
    scores = _gather_columns(scores)
    index = _gather_columns(index + offset)
    k = min(k, total - (1 if bool((exclude >= 0).any()) else 0))
    # by index first, then a stable sort by score: equal scores stay in gallery order
    by_index = torch.argsort(index, dim=1, stable=True)
    scores, index = scores.gather(1, by_index), index.gather(1, by_index)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return scores.gather(1, order), index.gather(1, order)


def _gather_columns(tensor: torch.Tensor) -> torch.Tensor:
    """(Q, k_r) from every rank side by side: (Q, sum of k_r)."""
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, tensor.cpu())
    return torch.cat(parts, 1)
