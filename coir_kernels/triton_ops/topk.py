"""Top-K with exclusion: `_topk_kernel` keeps a running top-K per query in
registers while it streams its share of the gallery. Score and index travel
together as one int64 key (order-preserving score bits high, reversed index low),
so one integer max orders by score, then lower index first, as the reference's
stable sort does. A tile's keys enter the running top-K by insertion only while
they beat its K-th best, so most tiles cost a row max and are never sorted. Each
program writes K_PAD keys per query; a torch top-k over the (Q, splits * K_PAD)
keys merges them and decodes scores and indices. Writes Q x splits x K_PAD x 8
bytes instead of the 4 x Q x G bytes of a materialised score matrix.
With HAS_OFFSET, each item's score offset is added to the tile (`tiles._add_offset`)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from coir_kernels.triton_ops.tiles import _add_offset, _score_tile, copies_of, offset_operand, plan

MAX_K = 64  # the running top-K lives in registers: K_PAD <= 64
_KEY_NONE = tl.constexpr(-(2**63))  # int64 key below every real score key
_INDEX_BIAS = 2**31 - 1  # low key half = _INDEX_BIAS - index: lower index, larger key


@triton.jit
def _score_keys(scores, cols):
    """int64 keys ordered like (score, -index): the high half holds the fp32 bits
    made order-preserving as a signed int (negative floats get their magnitude
    bits flipped), the low half _INDEX_BIAS - index. -0.0 becomes +0.0 first, as
    the two compare equal in the reference."""
    scores = tl.where(scores == 0.0, 0.0, scores)
    bits = scores.to(tl.int32, bitcast=True)
    ordered = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    low = (2147483647 - cols).to(tl.int64)  # cols < 2**31
    return (ordered.to(tl.int64) << 32) | low[None, :]


@triton.jit
def _topk_kernel(
    q_ptr, g_ptr, copy_group_ptr, copy_score_ptr, offset_ptr, exclude_ptr, out_ptr,
    num_queries, num_gallery, dim, num_copy_groups,
    stride_qm, stride_qd, stride_gn, stride_gd,
    num_gallery_blocks, num_splits,
    K_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, S_TOK: tl.constexpr, T_TOK: tl.constexpr, HAS_COPIES: tl.constexpr,
    HAS_OFFSET: tl.constexpr,
):
    """Per (query block, gallery split): the K_PAD best keys per query (scores plus
    their items' offsets with HAS_OFFSET), unsorted,
    to out (Q, num_splits, K_PAD) int64 (distinct sentinels below _KEY_NONE + K_PAD
    where there are fewer candidates).

    Selection is by insertion: while some row's best remaining tile key beats that
    row's running K_PAD-th best, it replaces it. The loop runs as many times as the
    most insertions any row of the tile makes: K_PAD for the first tile, and on
    real data rarely more than a few for later ones, so most tiles cost one max
    and one min per row -- no sort of the tile. Keys are unique (they hold the
    index; the sentinels are distinct), so "== max" and "== min" pick one entry.
    Reads as pass 2 of the rank counts; writes Q x num_splits x K_PAD x 8 bytes.
    """
    qb = tl.program_id(0)
    split = tl.program_id(1)
    rows = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_ok = rows < num_queries
    exclude = tl.load(exclude_ptr + rows, mask=row_ok, other=-1)
    slots = tl.arange(0, K_PAD)
    best = tl.full((BLOCK_Q, K_PAD), _KEY_NONE, dtype=tl.int64) + slots[None, :].to(tl.int64)
    lowest = tl.min(best, 1)  # running K_PAD-th best per row
    for gb in range(split, num_gallery_blocks, num_splits):
        cols = gb * BLOCK_G + tl.arange(0, BLOCK_G)
        acc = _score_tile(
            q_ptr, g_ptr, copy_group_ptr, copy_score_ptr, rows, cols, num_queries, num_gallery, dim,
            num_copy_groups, stride_qm, stride_qd, stride_gn, stride_gd,
            BLOCK_Q, BLOCK_G, BLOCK_D, PRECISION, S_TOK, T_TOK, HAS_COPIES,
        )
        acc = _add_offset(acc, offset_ptr, cols, num_gallery, HAS_OFFSET)
        valid = (cols[None, :] < num_gallery) & (cols[None, :] != exclude[:, None])
        keys = tl.where(valid, _score_keys(acc, cols), _KEY_NONE)
        top = tl.max(keys, 1)
        while tl.max((top > lowest).to(tl.int32), 0) > 0:
            take = top > lowest
            best = tl.where((best == lowest[:, None]) & take[:, None], top[:, None], best)
            keys = tl.where(keys == top[:, None], _KEY_NONE, keys)
            top = tl.max(keys, 1)
            lowest = tl.min(best, 1)
    out = out_ptr + (rows[:, None].to(tl.int64) * num_splits + split) * K_PAD + slots[None, :]
    tl.store(out, best, mask=row_ok[:, None])


def topk_excluding(
    query: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    exclude: torch.Tensor,
    config: dict | None = None,
    offset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused `reference.topk_excluding`, k <= MAX_K: (scores fp32 (Q, k), indices
    int64 (Q, k)), best first, ties to the lower index, k capped at the number of
    candidates exactly as the reference caps it; scores plus each item's `offset`
    (G,) if given."""
    launch = plan("topk", query, gallery, config)
    num_queries, num_gallery = query.shape[0], gallery.shape[0]
    if exclude.shape != (num_queries,):
        raise ValueError(f"exclude must be (Q,) with Q = {num_queries}")
    exclude = exclude.to(device=launch.q.device, dtype=torch.int64).contiguous()
    k = min(k, num_gallery - (1 if bool((exclude >= 0).any()) else 0))
    if k > MAX_K:
        raise ValueError(f"the Triton top-K supports k <= {MAX_K}, got {k}")
    if num_queries == 0 or k <= 0:
        k = max(k, 0)
        return (torch.empty(num_queries, k, device=launch.q.device),
                torch.empty(num_queries, k, dtype=torch.long, device=launch.q.device))
    k_pad = max(2, triton.next_power_of_2(k))
    splits = launch.splits()
    keys = torch.empty((num_queries, splits, k_pad), dtype=torch.int64, device=launch.q.device)
    copies = copies_of(gallery, gallery, (query,))
    offset_ptr, has_offset = offset_operand(offset, copies.scores)
    _topk_kernel[(launch.num_qb, splits)](
        launch.q, launch.g, copies.group, copies.scores, offset_ptr, exclude, keys,
        num_queries, num_gallery, launch.q.shape[1], copies.count, *launch.strides, launch.num_gb, splits,
        K_PAD=k_pad, HAS_COPIES=copies.present, HAS_OFFSET=has_offset, **launch.constants(),
    )
    # Merge: keys are unique (they hold the index), so top-k has no ties to break;
    # there are at least k real keys, so no sentinel is picked.
    best = keys.view(num_queries, splits * k_pad).topk(k, dim=1, sorted=True).values
    return decode_keys(best)


def decode_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores fp32, indices int64) from `_score_keys` keys."""
    ordered = keys >> 32  # arithmetic shift: the signed high half
    index = _INDEX_BIAS - (keys - (ordered << 32))
    ordered = ordered.to(torch.int32)
    bits = torch.where(ordered < 0, ordered ^ 0x7FFFFFFF, ordered)
    return bits.view(torch.float32), index
