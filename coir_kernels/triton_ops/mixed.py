"""Rank counts of mixed queries w0*q + w1*t + w2*f for every weight triple in one
gallery pass: the three score tiles q.g, t.g, f.g are computed once per gallery
block and every triple is compared there (harness/mixing/sweep.py calls this
through coir_kernels.mixed_rank_counts)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from coir_kernels.triton_ops.rank_counts import checked_labels, positive_scores
from coir_kernels.triton_ops.tiles import _score_tile, copies_of, operands, plan


@triton.jit
def _mixed_rank_count_kernel(
    q_ptr, t_ptr, f_ptr, g_ptr, copy_group_ptr, copy_score_ptr,
    w_ptr, pos_ptr, parts_score_ptr, exclude_ptr, counts_ptr,
    num_queries, num_gallery, dim, num_copy_groups, num_weights,
    stride_qm, stride_qd, stride_gn, stride_gd,
    num_gallery_blocks, num_splits,
    P: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, HAS_COPIES: tl.constexpr,
):
    """Rank counts of mixed queries for every weight triple, one gallery pass.
    (Its body is one fused loop over gallery blocks, parts and triples: longer than
    the project's 60 lines, kept whole so the three tiles stay in registers.)

    Per gallery block the three score tiles q.g, t.g, f.g are computed once (the
    tiles of pass 1, bitwise); for each positive they become differences to the
    positive's own three scores, and for each triple w the mixed difference
    w0*dq + w1*dt + w2*df is compared with 0 in registers: the positive's own
    difference is exactly 0. Counts go to counts (2, splits, W, Q, P) int32
    (greater, greater-or-equal), a slice each program owns: plain read-add-write,
    no atomics. Reads per gallery block: BLOCK_G x D gallery elements and the three
    query blocks (L2); the W x 3 weights are a few hundred bytes.
    """
    qb = tl.program_id(0)
    split = tl.program_id(1)
    rows = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_ok = rows < num_queries
    exclude = tl.load(exclude_ptr + rows, mask=row_ok, other=-1)
    plane = num_splits * num_weights * num_queries * P  # int32 counts per kind
    copy_part_stride = num_queries * num_copy_groups  # copy_score is (3, Q, groups): q, t, f
    for gb in range(split, num_gallery_blocks, num_splits):
        cols = gb * BLOCK_G + tl.arange(0, BLOCK_G)
        sq = _score_tile(
            q_ptr, g_ptr, copy_group_ptr, copy_score_ptr, rows, cols, num_queries, num_gallery, dim,
            num_copy_groups, stride_qm, stride_qd, stride_gn, stride_gd,
            BLOCK_Q, BLOCK_G, BLOCK_D, PRECISION, 1, 1, HAS_COPIES,
        )
        st = _score_tile(
            t_ptr, g_ptr, copy_group_ptr, copy_score_ptr + copy_part_stride, rows, cols, num_queries, num_gallery, dim,
            num_copy_groups, stride_qm, stride_qd, stride_gn, stride_gd,
            BLOCK_Q, BLOCK_G, BLOCK_D, PRECISION, 1, 1, HAS_COPIES,
        )
        sf = _score_tile(
            f_ptr, g_ptr, copy_group_ptr, copy_score_ptr + 2 * copy_part_stride, rows, cols, num_queries, num_gallery, dim,
            num_copy_groups, stride_qm, stride_qd, stride_gn, stride_gd,
            BLOCK_Q, BLOCK_G, BLOCK_D, PRECISION, 1, 1, HAS_COPIES,
        )
        valid = (cols[None, :] < num_gallery) & (cols[None, :] != exclude[:, None])
        for p in tl.static_range(P):
            # padding positives have nan scores: every comparison is False
            own = rows * P + p
            dq = sq - tl.load(parts_score_ptr + own, mask=row_ok, other=0.0)[:, None]
            dt = st - tl.load(parts_score_ptr + num_queries * P + own, mask=row_ok, other=0.0)[:, None]
            df = sf - tl.load(parts_score_ptr + 2 * num_queries * P + own, mask=row_ok, other=0.0)[:, None]
            for w in range(num_weights):
                w0 = tl.load(w_ptr + 3 * w)
                w1 = tl.load(w_ptr + 3 * w + 1)
                w2 = tl.load(w_ptr + 3 * w + 2)
                mixed = (dq * w0 + dt * w1) + df * w2
                n_greater = tl.sum((valid & (mixed > 0)).to(tl.int32), 1)
                n_at_least = tl.sum((valid & (mixed >= 0)).to(tl.int32), 1)
                slot = ((split * num_weights + w) * num_queries + rows).to(tl.int64) * P + p
                old = tl.load(counts_ptr + slot, mask=row_ok, other=0)
                tl.store(counts_ptr + slot, old + n_greater, mask=row_ok)
                old = tl.load(counts_ptr + plane + slot, mask=row_ok, other=0)
                tl.store(counts_ptr + plane + slot, old + n_at_least, mask=row_ok)


def mixed_rank_counts(
    parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    gallery: torch.Tensor,
    weights: torch.Tensor,
    positives: torch.Tensor,
    exclude: torch.Tensor,
    config: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused `reference.mixed_rank_counts`: (greater, equal, positive scores), each
    (W, Q, P), for single-vector parts (Q, D) x gallery (G, D).

    The parts and the gallery are L2-normalised here (O((Q + G) D), beside the
    O(Q G D) pass); pass 1 is `positive_scores` once per part, pass 2
    `_mixed_rank_count_kernel` for every triple at once."""
    normalised = [torch.nn.functional.normalize(x.float(), dim=-1).to(x.dtype) for x in (*parts, gallery)]
    prepared = [operands(part, normalised[3]) for part in normalised[:3]]
    q, g, precision, _, _ = prepared[0]
    q, t, f = (x[0].to(g.dtype).contiguous() for x in prepared)
    launch = plan("rank", parts[0], gallery, config, (q, g, precision, 1, 1))
    num_queries, num_gallery = q.shape[0], g.shape[0]
    positives, exclude = checked_labels(positives, exclude, num_queries, num_gallery, q.device)
    weights = weights.to(device=q.device, dtype=torch.float32).contiguous()
    shape = (weights.shape[0], num_queries, positives.shape[1])
    if 0 in shape:
        empty = torch.zeros(shape, dtype=torch.int64, device=q.device)
        return empty, empty.clone(), torch.full(shape, float("nan"), device=q.device)
    copies = copies_of(normalised[3], gallery, tuple(normalised[:3]))
    part_scores = torch.full((3, num_queries, shape[2]), float("nan"), dtype=torch.float32, device=q.device)
    for i, part in enumerate((q, t, f)):  # the tiles pass 2 computes, bit for bit
        positive_scores(launch, part, copies, copies.scores[i], positives, part_scores[i], num_gallery)
    splits = launch.splits()
    counts = torch.zeros((2, splits, *shape), dtype=torch.int32, device=q.device)
    _mixed_rank_count_kernel[(launch.num_qb, splits)](
        q, t, f, g, copies.group, copies.scores, weights, positives, part_scores, exclude, counts,
        num_queries, num_gallery, q.shape[1], copies.count, shape[0], *launch.strides, launch.num_gb, splits,
        P=shape[2], HAS_COPIES=copies.present, **launch.constants(tokens=False),
    )
    return _counts_and_scores(counts, part_scores, weights, positives)


def _counts_and_scores(counts, part_scores, weights, positives):
    """(greater, equal, mixed positive scores) from the splits' (greater,
    greater-or-equal) counts and the parts' positive scores."""
    greater, at_least = counts.sum(dim=1, dtype=torch.int64)
    pad = (positives < 0)[None]
    equal = (at_least - greater - 1).masked_fill(pad, 0)  # the positive is >= itself
    w = weights[:, :, None, None]
    mixed = (part_scores[0][None] * w[:, 0] + part_scores[1][None] * w[:, 1]) + part_scores[2][None] * w[:, 2]
    return greater.masked_fill(pad, 0), equal, mixed.masked_fill(pad, float("nan"))
