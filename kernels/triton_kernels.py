"""Fused Triton kernels for single-vector (Q, D) x (G, D) retrieval.

Two operations, each a kernel (or two), a launcher and the public entry point in
`kernels/__init__.py`; `kernels/reference.py` is the torch reference they match:

* `target_rank_counts`: for each (query, positive), how many valid gallery items
  score strictly higher / exactly the same as the positive, and the positive's
  score. Two launches:
    1. `_positive_scores_kernel` computes each positive's score with the very
       score-tile code of pass 2 (same helper, same BLOCK_Q x BLOCK_G x BLOCK_D
       tile, same tile origin, same num_warps), so it is bitwise the value pass 2
       sees in its tile. A torch dot product (or a tile of another shape) can
       differ in the last bit, and then a duplicate of the positive would count as
       "greater" instead of "equal".
    2. `_rank_count_kernel` streams gallery blocks, computes each score tile with
       tl.dot and compares it against the positives' scores in registers. The
       Q x G score matrix never reaches memory: the only writes are Q x P counts.
* `topk_excluding`: `_topk_kernel` keeps a running top-K per query in registers
  while it streams its share of the gallery. Score and index travel together as
  one int64 key (order-preserving score bits high, reversed index low), so one
  integer max orders by score, then lower index first, as the reference's stable
  sort does. A tile's keys enter the running top-K by insertion only while they
  beat its K-th best, so most tiles cost a row max and are never sorted. Each
  program writes K_PAD keys per query; a torch top-k over the (Q, splits * K_PAD)
  keys merges them and decodes scores and indices.

Memory traffic (bytes, e = element size): each program reads its query block
(BLOCK_Q x D x e) once per gallery block (from L2 after the first time) and each
gallery block (BLOCK_G x D x e). Grid axis 0 is the query block, so the programs
resident at once are the query blocks of one gallery split: they walk the same
gallery blocks at about the same time, and L2 serves most gallery reads after the
first. Outputs are tiny: 2 x Q x P int32 counts, or Q x splits x K_PAD int64 keys,
instead of the 4 x Q x G bytes of a materialised score matrix.

Numerics: fp32 accumulation; fp32 inputs use input_precision="ieee" (no TF32) to
match the fp32 reference, fp16 (and bf16 on a GPU) use the tensor cores with fp32
accumulation. Under TRITON_INTERPRET=1 bf16 arithmetic is wrong, so bf16 inputs
are widened to fp32 there (exactly).

Triton is imported by this module only; `kernels/__init__.py` imports it lazily,
so TRITON_INTERPRET can still be set after `import kernels`. The interpreter
setting is read when the kernels are decorated, i.e. when this module is imported.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from kernels import duplicates, reference

# Read by @triton.jit at decoration time: the kernels below are interpreted
# (run on CPU tensors) exactly when this was set before this module's import.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
# Triton's own library (tl.max, tl.sum, ...) was decorated when triton.language was
# first imported -- possibly earlier, by torch._dynamo or transformers. Interpreted
# kernels cannot call compiled library functions, nor the other way round.
LIBRARY_INTERPRETED = type(tl.standard.max).__name__ == "InterpretedFunction"

MAX_K = 64  # the running top-K lives in registers: K_PAD <= 64
MAX_TOKENS = 64  # tokens per query / item of max-sim scoring (BLIP-2 has 32)
_KEY_NONE = tl.constexpr(-(2**63))  # int64 key below every real score key
_INDEX_BIAS = 2**31 - 1  # low key half = _INDEX_BIAS - index: lower index, larger key


# --------------------------------------------------------------------------------------
# Meta-parameters
# --------------------------------------------------------------------------------------


def _pow2(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(1, n))))


def block_config(
    op: str, num_queries: int, num_gallery: int, dim: int, dtype: torch.dtype, device: torch.device,
    s_tok: int = 1, t_tok: int = 1,
) -> dict:
    """Block sizes, warps and parallelism for one problem, in one place.

    Keyed on the problem sizes. `programs` is how many programs to aim for: the
    launchers split the gallery (and pass 1's positives) until the grid has about
    that many. Under the interpreter programs run one after another, each with
    Python overhead, so blocks are as large as the problem allows and one program
    per query block walks the whole gallery. On a GPU the tiles are the usual
    matmul-sized ones -- not tuned on hardware yet: no GPU was available when these
    were written -- and about 4 programs per SM. With S (T) tokens per query (item)
    the dot tile is BLOCK_Q*S x BLOCK_G*T token rows, so the blocks shrink by the
    token counts (tl.dot needs 16 rows and columns at least).
    """
    if device.type != "cuda":
        block_q, block_g, block_d, warps, programs = 128, 256, 256, 4, 1
    else:
        wide = dtype in (torch.float16, torch.bfloat16)
        if op == "topk":
            # int64 keys of the tile and the running top-K live in registers: smaller tiles.
            block_q, block_g, block_d, warps = 64, 128, 64 if wide else 32, 4
        else:
            block_q, block_g, block_d, warps = (128, 128, 64, 8) if wide else (64, 64, 32, 4)
        programs = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return dict(
        BLOCK_Q=_pow2(num_queries, max(1, 16 // s_tok), max(1, block_q // s_tok)),
        BLOCK_G=_pow2(num_gallery, max(1, 16 // t_tok), max(1, block_g // t_tok)),
        BLOCK_D=_pow2(dim, 16, block_d),
        num_warps=warps,
        programs=programs,
    )


def _grid_split(programs: int, num_qb: int, most: int) -> int:
    """Programs per query block along grid axis 1: enough for `programs` in all."""
    return max(1, min(most, triton.cdiv(programs, num_qb)))


# --------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------


@triton.jit
def _score_tile(
    q_ptr, g_ptr, copy_group_ptr, copy_score_ptr,
    rows, cols,
    num_queries, num_gallery, dim, num_copy_groups,
    stride_qm, stride_qd, stride_gn, stride_gd,
    BLOCK_Q: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, S_TOK: tl.constexpr, T_TOK: tl.constexpr, HAS_COPIES: tl.constexpr,
):
    """(BLOCK_Q, BLOCK_G) fp32 scores q[rows] . g[cols], accumulated over D in
    BLOCK_D chunks. Both rank passes call this with the same tile origin, so a
    score comes out bitwise the same in either. Out-of-range rows/cols/dims load
    0.0, which adds nothing to the dot products.

    Multi-vector features (BLIP-2's query tokens) score by max-sim: query i is the
    S_TOK rows i*S_TOK ... of q (a (Q*S_TOK, D) view), item j the T_TOK rows of g;
    the (BLOCK_Q*S_TOK, BLOCK_G*T_TOK) token-pair tile is reduced by the max over
    each query's and each item's tokens. The (Q, G, S, T) tensor of CoVR-2's
    evaluation exists one tile at a time, in registers.

    Copies of a gallery row (HAS_COPIES, `kernels/duplicates.py`) take their
    group's one score, copy_score (Q, num_copy_groups) fp32, in place of the tile's:
    the tile's bits for a row depend on where the row sits in it. Reads: BLOCK_G
    group ids per tile, and a group score only where a column is a copy."""
    q_rows = tl.min(rows, 0) * S_TOK + tl.arange(0, BLOCK_Q * S_TOK)
    g_rows = tl.min(cols, 0) * T_TOK + tl.arange(0, BLOCK_G * T_TOK)
    q_rows64 = q_rows.to(tl.int64)  # G x D can exceed 2**31 elements
    g_rows64 = g_rows.to(tl.int64)
    acc = tl.zeros((BLOCK_Q * S_TOK, BLOCK_G * T_TOK), dtype=tl.float32)
    for d0 in range(0, dim, BLOCK_D):
        dims = d0 + tl.arange(0, BLOCK_D)
        q = tl.load(
            q_ptr + q_rows64[:, None] * stride_qm + dims[None, :] * stride_qd,
            mask=(q_rows[:, None] < num_queries * S_TOK) & (dims[None, :] < dim),
            other=0.0,
        )
        g = tl.load(  # loaded transposed: (BLOCK_D, BLOCK_G * T_TOK)
            g_ptr + g_rows64[None, :] * stride_gn + dims[:, None] * stride_gd,
            mask=(g_rows[None, :] < num_gallery * T_TOK) & (dims[:, None] < dim),
            other=0.0,
        )
        acc = tl.dot(q, g, acc, input_precision=PRECISION)
    if S_TOK * T_TOK > 1:
        pairs = tl.reshape(acc, (BLOCK_Q, S_TOK, BLOCK_G, T_TOK))
        acc = tl.max(tl.max(pairs, 3), 1)
    if HAS_COPIES:
        group = tl.load(copy_group_ptr + cols, mask=cols < num_gallery, other=-1)
        copy = group[None, :] >= 0
        shared = tl.load(
            copy_score_ptr + rows[:, None].to(tl.int64) * num_copy_groups + group[None, :],
            mask=(rows[:, None] < num_queries) & copy,
            other=0.0,
        )
        acc = tl.where(copy, shared, acc)
    return acc


@triton.jit
def _positive_scores_kernel(
    q_ptr, g_ptr, copy_group_ptr, copy_score_ptr, pos_ptr, out_ptr,
    num_queries, num_gallery, dim, num_copy_groups,
    stride_qm, stride_qd, stride_gn, stride_gd,
    num_groups,
    P: tl.constexpr, P_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, S_TOK: tl.constexpr, T_TOK: tl.constexpr, HAS_COPIES: tl.constexpr,
):
    """Pass 1: scores of the positives, out (Q, P) fp32 (left as is for padding).

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
    q_ptr, g_ptr, copy_group_ptr, copy_score_ptr, pos_ptr, pos_score_ptr, exclude_ptr, greater_ptr, equal_ptr,
    num_queries, num_gallery, dim, num_copy_groups,
    stride_qm, stride_qd, stride_gn, stride_gd,
    num_gallery_blocks, num_splits,
    P: tl.constexpr, P_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, S_TOK: tl.constexpr, T_TOK: tl.constexpr, HAS_COPIES: tl.constexpr,
):
    """Pass 2: counts (Q, P) int32, added atomically (zero-initialised).

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
    q_ptr, g_ptr, copy_group_ptr, copy_score_ptr, exclude_ptr, out_ptr,
    num_queries, num_gallery, dim, num_copy_groups,
    stride_qm, stride_qd, stride_gn, stride_gd,
    num_gallery_blocks, num_splits,
    K_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, S_TOK: tl.constexpr, T_TOK: tl.constexpr, HAS_COPIES: tl.constexpr,
):
    """Per (query block, gallery split): the K_PAD best keys per query, unsorted,
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


# --------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------


def _check_device(query: torch.Tensor, gallery: torch.Tensor) -> None:
    if INTERPRETED != LIBRARY_INTERPRETED:
        raise RuntimeError(
            "triton was imported before TRITON_INTERPRET was "
            + ("set" if INTERPRETED else "unset")
            + ", so its library and these kernels disagree on whether to interpret: set "
            "TRITON_INTERPRET=1 before anything imports triton (torch._dynamo does)"
        )
    if query.device != gallery.device:
        raise ValueError(f"query on {query.device} but gallery on {gallery.device}")
    if query.device.type != "cuda" and not INTERPRETED:
        raise RuntimeError(
            "the Triton kernels need CUDA tensors, or TRITON_INTERPRET=1 set before "
            "triton (and kernels.triton_kernels) is first imported to run them on CPU"
        )


def _operands(query: torch.Tensor, gallery: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str, int, int]:
    """(q, g, precision, S, T): both as (rows, D) views of their S (T) token rows per
    query (item) -- 1 for single vectors -- in a common dot dtype: fp16 (or bf16 on
    a GPU) stays, anything else becomes fp32 (exact for fp16/bf16, as the
    reference's .float())."""
    if query.ndim not in (2, 3) or gallery.ndim not in (2, 3) or query.shape[-1] != gallery.shape[-1]:
        raise ValueError(
            f"need (Q, D) or (Q, S, D) and (G, D) or (G, T, D), got {tuple(query.shape)} "
            f"and {tuple(gallery.shape)}"
        )
    s_tok = query.shape[1] if query.ndim == 3 else 1
    t_tok = gallery.shape[1] if gallery.ndim == 3 else 1
    if not (supports_tokens(s_tok) and supports_tokens(t_tok)):
        raise ValueError(f"token counts must be powers of two up to {MAX_TOKENS}, got {s_tok} and {t_tok}")
    q = query.reshape(-1, query.shape[-1])
    g = gallery.reshape(-1, gallery.shape[-1])
    low = (torch.float16,) if INTERPRETED and query.device.type != "cuda" else (torch.float16, torch.bfloat16)
    if q.dtype == g.dtype and q.dtype in low:
        return q, g, "tf32", s_tok, t_tok  # precision flag only matters for fp32 operands
    return q.float(), g.float(), "ieee", s_tok, t_tok


class _CopyScores(NamedTuple):
    """What the kernels need of a gallery's duplicate groups: each row's group
    (int64, -1 for none), each group's score per query ((parts,) Q, groups fp32), the
    number of groups, and whether there are any (HAS_COPIES; else placeholders)."""

    group: torch.Tensor
    scores: torch.Tensor
    count: int
    present: bool


def _copies(scored: torch.Tensor, found_in: torch.Tensor, queries: tuple[torch.Tensor, ...]) -> _CopyScores:
    """Duplicate groups of `found_in` (the gallery as given); their scores are those
    of `scored` (the gallery as scored, e.g. normalised) against each of `queries`,
    one block per query tensor when there are several."""
    groups = duplicates.find(found_in)
    if groups is None:
        placeholder = torch.zeros(len(queries), 1, device=scored.device).squeeze(0)
        return _CopyScores(placeholder[..., 0].long(), placeholder, 0, False)
    first = scored[groups.first]
    scores = torch.stack([reference.similarity(x, first) for x in queries])
    return _CopyScores(groups.group.contiguous(), scores.squeeze(0) if len(queries) == 1 else scores,
                       len(groups.first), True)


def supports_tokens(count: int) -> bool:
    return 1 <= count <= MAX_TOKENS and count & (count - 1) == 0


def target_rank_counts(
    query: torch.Tensor,
    gallery: torch.Tensor,
    positives: torch.Tensor,
    exclude: torch.Tensor,
    config: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused `reference.target_rank_counts` for (Q, D) x (G, D): (greater int64,
    equal int64, positive scores fp32 with nan for padding), each (Q, P).
    `config` overrides `block_config` (tests use it to force small blocks/splits)."""
    _check_device(query, gallery)
    q, g, precision, s_tok, t_tok = _operands(query, gallery)
    num_queries, num_gallery, dim = query.shape[0], gallery.shape[0], q.shape[1]
    if positives.ndim != 2 or positives.shape[0] != num_queries or exclude.shape != (num_queries,):
        raise ValueError(f"positives must be (Q, P) and exclude (Q,) with Q = {num_queries}")
    # labels may live on the CPU: they are Q x P, so move them to the scores' device
    positives = positives.to(device=q.device, dtype=torch.int64).contiguous()
    exclude = exclude.to(device=q.device, dtype=torch.int64).contiguous()
    num_pos = positives.shape[1]
    if num_pos and num_queries and int(positives.max()) >= num_gallery:
        raise IndexError(f"positive index out of range for a gallery of {num_gallery}")
    device = q.device
    pos_scores = torch.full((num_queries, num_pos), float("nan"), dtype=torch.float32, device=device)
    greater = torch.zeros((num_queries, num_pos), dtype=torch.int32, device=device)
    equal = torch.zeros((num_queries, num_pos), dtype=torch.int32, device=device)
    if num_queries == 0 or num_pos == 0:
        return greater.long(), equal.long(), pos_scores
    meta = dict(config or block_config("rank", num_queries, num_gallery, dim, q.dtype, device, s_tok, t_tok))
    programs, warps = meta.pop("programs"), meta.pop("num_warps")
    p_pad = max(2, triton.next_power_of_2(num_pos))
    num_qb = triton.cdiv(num_queries, meta["BLOCK_Q"])
    num_gb = triton.cdiv(num_gallery, meta["BLOCK_G"])
    strides = (q.stride(0), q.stride(1), g.stride(0), g.stride(1))
    # Same tiles, same warps in both passes: pass 1's scores are pass 2's bits.
    groups = _grid_split(programs, num_qb, num_gb)
    copies = _copies(gallery, gallery, (query,))
    _positive_scores_kernel[(num_qb, groups)](
        q, g, copies.group, copies.scores, positives, pos_scores, num_queries, num_gallery, dim,
        copies.count, *strides, groups,
        P=num_pos, P_PAD=p_pad, PRECISION=precision, S_TOK=s_tok, T_TOK=t_tok, HAS_COPIES=copies.present,
        num_warps=warps, **meta,
    )
    splits = _grid_split(programs, num_qb, num_gb)
    _rank_count_kernel[(num_qb, splits)](
        q, g, copies.group, copies.scores, positives, pos_scores, exclude, greater, equal,
        num_queries, num_gallery, dim, copies.count, *strides, num_gb, splits,
        P=num_pos, P_PAD=p_pad, PRECISION=precision, S_TOK=s_tok, T_TOK=t_tok, HAS_COPIES=copies.present,
        num_warps=warps, **meta,
    )
    return greater.long(), equal.long(), pos_scores


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
    O(Q G D) pass); pass 1 is `_positive_scores_kernel` once per part, pass 2
    `_mixed_rank_count_kernel` for every triple at once."""
    _check_device(parts[0], gallery)
    normalised = [torch.nn.functional.normalize(x.float(), dim=-1).to(x.dtype) for x in (*parts, gallery)]
    operands = [_operands(part, normalised[3]) for part in normalised[:3]]
    (q, g, precision, _, _), (t, _, _, _, _), (f, _, _, _, _) = operands
    q, t, f = (x.to(g.dtype).contiguous() for x in (q, t, f))
    num_queries, dim = q.shape
    num_gallery = g.shape[0]
    device = q.device
    positives = positives.to(device=device, dtype=torch.int64).contiguous()
    exclude = exclude.to(device=device, dtype=torch.int64).contiguous()
    weights = weights.to(device=device, dtype=torch.float32).contiguous()
    num_weights, num_pos = weights.shape[0], positives.shape[1]
    shape = (num_weights, num_queries, num_pos)
    if num_queries == 0 or num_pos == 0 or num_weights == 0:
        empty = torch.zeros(shape, dtype=torch.int64, device=device)
        return empty, empty.clone(), torch.full(shape, float("nan"), device=device)
    if int(positives.max()) >= num_gallery:
        raise IndexError(f"positive index out of range for a gallery of {num_gallery}")
    meta = dict(config or block_config("rank", num_queries, num_gallery, dim, q.dtype, device))
    programs, warps = meta.pop("programs"), meta.pop("num_warps")
    p_pad = max(2, triton.next_power_of_2(num_pos))
    num_qb = triton.cdiv(num_queries, meta["BLOCK_Q"])
    num_gb = triton.cdiv(num_gallery, meta["BLOCK_G"])
    strides = (q.stride(0), q.stride(1), g.stride(0), g.stride(1))
    groups = _grid_split(programs, num_qb, num_gb)
    part_scores = torch.full((3, num_queries, num_pos), float("nan"), dtype=torch.float32, device=device)
    copies = _copies(normalised[3], gallery, normalised[:3])
    for i, part in enumerate((q, t, f)):  # the tiles pass 2 computes, bit for bit
        _positive_scores_kernel[(num_qb, groups)](
            part, g, copies.group, copies.scores[i], positives, part_scores[i], num_queries, num_gallery, dim,
            copies.count, *strides, groups,
            P=num_pos, P_PAD=p_pad, PRECISION=precision, S_TOK=1, T_TOK=1, HAS_COPIES=copies.present,
            num_warps=warps, **meta,
        )
    splits = _grid_split(programs, num_qb, num_gb)
    counts = torch.zeros((2, splits, *shape), dtype=torch.int32, device=device)
    _mixed_rank_count_kernel[(num_qb, splits)](
        q, t, f, g, copies.group, copies.scores, weights, positives, part_scores, exclude, counts,
        num_queries, num_gallery, dim, copies.count, num_weights, *strides, num_gb, splits,
        P=num_pos, PRECISION=precision, HAS_COPIES=copies.present, num_warps=warps, **meta,
    )
    greater, at_least = counts.sum(dim=1, dtype=torch.int64)
    pad = (positives < 0)[None]
    equal = (at_least - greater - 1).masked_fill(pad, 0)  # the positive is >= itself
    w = weights[:, :, None, None]
    mixed = (part_scores[0][None] * w[:, 0] + part_scores[1][None] * w[:, 1]) + part_scores[2][None] * w[:, 2]
    return greater.masked_fill(pad, 0), equal, mixed.masked_fill(pad, float("nan"))


def topk_excluding(
    query: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    exclude: torch.Tensor,
    config: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused `reference.topk_excluding` for (Q, D) x (G, D), k <= MAX_K:
    (scores fp32 (Q, k), indices int64 (Q, k)), best first, ties to the lower index,
    k capped at the number of candidates exactly as the reference caps it."""
    _check_device(query, gallery)
    q, g, precision, s_tok, t_tok = _operands(query, gallery)
    num_queries, num_gallery, dim = query.shape[0], gallery.shape[0], q.shape[1]
    if exclude.shape != (num_queries,):
        raise ValueError(f"exclude must be (Q,) with Q = {num_queries}")
    exclude = exclude.to(device=q.device, dtype=torch.int64).contiguous()
    k = min(k, num_gallery - (1 if bool((exclude >= 0).any()) else 0))
    if k > MAX_K:
        raise ValueError(f"the Triton top-K supports k <= {MAX_K}, got {k}")
    device = q.device
    if num_queries == 0 or k <= 0:
        k = max(k, 0)
        return (torch.empty(num_queries, k, device=device),
                torch.empty(num_queries, k, dtype=torch.long, device=device))
    meta = dict(config or block_config("topk", num_queries, num_gallery, dim, q.dtype, device, s_tok, t_tok))
    programs, warps = meta.pop("programs"), meta.pop("num_warps")
    k_pad = max(2, triton.next_power_of_2(k))
    num_qb = triton.cdiv(num_queries, meta["BLOCK_Q"])
    num_gb = triton.cdiv(num_gallery, meta["BLOCK_G"])
    splits = _grid_split(programs, num_qb, num_gb)
    keys = torch.empty((num_queries, splits, k_pad), dtype=torch.int64, device=device)
    copies = _copies(gallery, gallery, (query,))
    _topk_kernel[(num_qb, splits)](
        q, g, copies.group, copies.scores, exclude, keys, num_queries, num_gallery, dim, copies.count,
        q.stride(0), q.stride(1), g.stride(0), g.stride(1), num_gb, splits,
        K_PAD=k_pad, PRECISION=precision, S_TOK=s_tok, T_TOK=t_tok, HAS_COPIES=copies.present,
        num_warps=warps, **meta,
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
