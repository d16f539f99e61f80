"""Rank counts in two launches, for single vectors and BLIP-2's max-sim: for each
(query, positive), how many valid gallery items score strictly higher / exactly the
same as the positive, and the positive's score.

1. `_positive_scores_kernel` computes each positive's score with the very
   score-tile code of pass 2 (same helper, same BLOCK_Q x BLOCK_G x BLOCK_D tile,
   same tile origin, same num_warps), so it is bitwise the value pass 2 sees in its
   tile (mixed.py uses it for each of its three parts).
2. `_rank_count_kernel` streams gallery blocks, computes each score tile with
   tl.dot and compares it against the positives' scores in registers. The Q x G
   score matrix never reaches memory: the only writes are Q x P counts.

With HAS_OFFSET, both passes add each item's score offset (G,) to their tiles
(`tiles._add_offset`); without it, offset_ptr is a stand-in they never read.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from coir_kernels.triton_ops.tiles import (
    Launch,
    _add_offset,
    _score_tile,
    copies_of,
    offset_operand,
    plan,
)


@triton.jit
def _positive_scores_kernel(
    q_ptr, g_ptr, copy_group_ptr, copy_score_ptr, offset_ptr, pos_ptr, out_ptr,
    num_queries, num_gallery, dim, num_copy_groups,
    stride_qm, stride_qd, stride_gn, stride_gd,
    num_groups,
    P: tl.constexpr, P_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, S_TOK: tl.constexpr, T_TOK: tl.constexpr, HAS_COPIES: tl.constexpr,
    HAS_OFFSET: tl.constexpr,
):
    """Pass 1: scores of the positives (each plus its offset with HAS_OFFSET), out
    (Q, P) fp32 (left as is for padding).

    Grid (query blocks, num_groups). A program takes the gallery blocks holding
    positives of its query block (those with block % num_groups == group), and for
    each, largest first, computes that (query block, gallery block) tile -- the
    very tile pass 2 computes -- and writes the scores of all the block's
    positives lying in it. Work: one tile per distinct (query block, gallery
    block) holding a positive, at most Q x P tiles (negligible beside pass 2 for
    large G); traffic: those tiles' q and g rows in, Q x P scores out.
    """
    qb = tl.program_id(0)
    group = tl.program_id(1)
    rows = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_ok = rows < num_queries
    pcols = tl.arange(0, P_PAD)
    positives = tl.load(
        pos_ptr + rows[:, None] * P + pcols[None, :],
        mask=row_ok[:, None] & (pcols[None, :] < P),
        other=-1,
    )
    # the gallery block of each positive this program owns, -1 otherwise
    blocks = tl.where(positives >= 0, positives // BLOCK_G, -1)
    blocks = tl.where(blocks % num_groups == group, blocks, -1)
    gb = tl.max(tl.max(blocks, 1), 0)
    while gb >= 0:
        cols = gb * BLOCK_G + tl.arange(0, BLOCK_G)
        acc = _score_tile(
            q_ptr, g_ptr, copy_group_ptr, copy_score_ptr, rows, cols, num_queries, num_gallery, dim,
            num_copy_groups, stride_qm, stride_qd, stride_gn, stride_gd,
            BLOCK_Q, BLOCK_G, BLOCK_D, PRECISION, S_TOK, T_TOK, HAS_COPIES,
        )
        acc = _add_offset(acc, offset_ptr, cols, num_gallery, HAS_OFFSET)
        for p in tl.static_range(P):
            pos = tl.load(pos_ptr + rows * P + p, mask=row_ok, other=-1)
            hit = row_ok & (pos >= gb * BLOCK_G) & (pos < gb * BLOCK_G + BLOCK_G)
            # max over {score, -inf, ...} returns the score bit for bit
            score = tl.max(tl.where(cols[None, :] == pos[:, None], acc, float("-inf")), 1)
            tl.store(out_ptr + rows * P + p, score, mask=hit)
        blocks = tl.where(blocks == gb, -1, blocks)
        gb = tl.max(tl.max(blocks, 1), 0)


@triton.jit
def _rank_count_kernel(
    q_ptr, g_ptr, copy_group_ptr, copy_score_ptr, offset_ptr, pos_ptr, pos_score_ptr, exclude_ptr,
    greater_ptr, equal_ptr,
    num_queries, num_gallery, dim, num_copy_groups,
    stride_qm, stride_qd, stride_gn, stride_gd,
    num_gallery_blocks, num_splits,
    P: tl.constexpr, P_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, S_TOK: tl.constexpr, T_TOK: tl.constexpr, HAS_COPIES: tl.constexpr,
    HAS_OFFSET: tl.constexpr,
):
    """Pass 2: counts (Q, P) int32, added atomically (zero-initialised), of the tile's
    scores (each plus its item's offset with HAS_OFFSET).

    Grid (query blocks, gallery splits); a program walks gallery blocks
    split, split + num_splits, ... and keeps its counts in registers, so each
    program does one atomic add per (query, positive). Reads: per gallery block,
    BLOCK_G x D gallery elements (+ the query block from L2) and Q x P positives and
    their scores (tiny, cached); writes: Q x P counts once per split.
    """
    qb = tl.program_id(0)
    split = tl.program_id(1)
    rows = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_ok = rows < num_queries
    exclude = tl.load(exclude_ptr + rows, mask=row_ok, other=-1)
    pcols = tl.arange(0, P_PAD)
    greater = tl.zeros((BLOCK_Q, P_PAD), dtype=tl.int32)
    equal = tl.zeros((BLOCK_Q, P_PAD), dtype=tl.int32)
    for gb in range(split, num_gallery_blocks, num_splits):
        cols = gb * BLOCK_G + tl.arange(0, BLOCK_G)
        acc = _score_tile(
            q_ptr, g_ptr, copy_group_ptr, copy_score_ptr, rows, cols, num_queries, num_gallery, dim,
            num_copy_groups, stride_qm, stride_qd, stride_gn, stride_gd,
            BLOCK_Q, BLOCK_G, BLOCK_D, PRECISION, S_TOK, T_TOK, HAS_COPIES,
        )
        acc = _add_offset(acc, offset_ptr, cols, num_gallery, HAS_OFFSET)
        valid = (cols[None, :] < num_gallery) & (cols[None, :] != exclude[:, None])
        for p in tl.static_range(P):
            pos = tl.load(pos_ptr + rows * P + p, mask=row_ok, other=-1)
            # padding positives have a nan score: every comparison is False
            score = tl.load(pos_score_ptr + rows * P + p, mask=row_ok, other=0.0)
            others = valid & (cols[None, :] != pos[:, None])  # never the positive itself
            n_greater = tl.sum((others & (acc > score[:, None])).to(tl.int32), 1)
            n_equal = tl.sum((others & (acc == score[:, None])).to(tl.int32), 1)
            greater += tl.where(pcols[None, :] == p, n_greater[:, None], 0)
            equal += tl.where(pcols[None, :] == p, n_equal[:, None], 0)
    offsets = rows[:, None] * P + pcols[None, :]
    in_range = row_ok[:, None] & (pcols[None, :] < P)
    pos = tl.load(pos_ptr + offsets, mask=in_range, other=-1)
    keep = in_range & (pos >= 0)
    tl.atomic_add(greater_ptr + offsets, greater, mask=keep)
    tl.atomic_add(equal_ptr + offsets, equal, mask=keep)


def checked_labels(positives: torch.Tensor, exclude: torch.Tensor, num_queries: int, num_gallery: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """positives (Q, P) and exclude (Q,) as contiguous int64 on the scores' device
    (labels may live on the CPU: they are Q x P), checked against the problem."""
    if positives.ndim != 2 or positives.shape[0] != num_queries or exclude.shape != (num_queries,):
        raise ValueError(f"positives must be (Q, P) and exclude (Q,) with Q = {num_queries}")
    positives = positives.to(device=device, dtype=torch.int64).contiguous()
    exclude = exclude.to(device=device, dtype=torch.int64).contiguous()
    if positives.numel() and int(positives.max()) >= num_gallery:
        raise IndexError(f"positive index out of range for a gallery of {num_gallery}")
    return positives, exclude


def positive_scores(launch: Launch, part: torch.Tensor, copies, copy_scores: torch.Tensor,
                    positives: torch.Tensor, out: torch.Tensor, num_gallery: int,
                    offset: torch.Tensor | None = None) -> None:
    """Pass 1 for one query operand `part` (the launch's q, or a mixed query's t or
    f): each positive's score (plus its `offset`) into out (Q, P), from the tile pass 2
    computes."""
    num_queries, num_pos = out.shape
    groups = launch.splits()
    offset_ptr, has_offset = offset_operand(offset, copy_scores)
    _positive_scores_kernel[(launch.num_qb, groups)](
        part, launch.g, copies.group, copy_scores, offset_ptr, positives, out,
        num_queries, num_gallery, part.shape[1], copies.count, *launch.strides, groups,
        P=num_pos, P_PAD=max(2, triton.next_power_of_2(num_pos)), HAS_COPIES=copies.present,
        HAS_OFFSET=has_offset, **launch.constants(),
    )


def target_rank_counts(
    query: torch.Tensor,
    gallery: torch.Tensor,
    positives: torch.Tensor,
    exclude: torch.Tensor,
    config: dict | None = None,
    offset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused `reference.target_rank_counts`: (greater int64, equal int64, positive
    scores fp32 with nan for padding), each (Q, P); each item's `offset` (G,) added to
    its score if given. `config` overrides `block_config` (tests use it to force small
    blocks/splits)."""
    launch = plan("rank", query, gallery, config)
    num_queries, num_gallery = query.shape[0], gallery.shape[0]
    positives, exclude = checked_labels(positives, exclude, num_queries, num_gallery, launch.q.device)
    shape, device = positives.shape, launch.q.device
    pos_scores = torch.full(shape, float("nan"), dtype=torch.float32, device=device)
    greater = torch.zeros(shape, dtype=torch.int32, device=device)
    equal = torch.zeros(shape, dtype=torch.int32, device=device)
    if num_queries == 0 or shape[1] == 0:
        return greater.long(), equal.long(), pos_scores
    copies = copies_of(gallery, gallery, (query,))
    # Same tiles, same warps in both passes: pass 1's scores are pass 2's bits.
    positive_scores(launch, launch.q, copies, copies.scores, positives, pos_scores, num_gallery, offset)
    splits = launch.splits()
    offset_ptr, has_offset = offset_operand(offset, copies.scores)
    _rank_count_kernel[(launch.num_qb, splits)](
        launch.q, launch.g, copies.group, copies.scores, offset_ptr, positives, pos_scores,
        exclude, greater, equal, num_queries, num_gallery, launch.q.shape[1], copies.count, *launch.strides,
        launch.num_gb, splits,
        P=shape[1], P_PAD=max(2, triton.next_power_of_2(shape[1])), HAS_COPIES=copies.present,
        HAS_OFFSET=has_offset, **launch.constants(),
    )
    return greater.long(), equal.long(), pos_scores
