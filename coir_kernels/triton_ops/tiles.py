"""What every Triton kernel of the retrieval core shares: the mode flags, block
sizes, the score tile (single vectors and BLIP-2's max-sim, copies of a gallery row
taking their group's score), operand preparation and the launch plan.

Memory traffic (bytes, e = element size): each program reads its query block
(BLOCK_Q x D x e) once per gallery block (from L2 after the first time) and each
gallery block (BLOCK_G x D x e). Grid axis 0 is the query block, so the programs
resident at once are the query blocks of one gallery split: they walk the same
gallery blocks at about the same time, and L2 serves most gallery reads after the
first.

Numerics: fp32 accumulation; fp32 inputs use input_precision="ieee" (no TF32) to
match the fp32 reference, fp16 (and bf16 on a GPU) use the tensor cores with fp32
accumulation. Under TRITON_INTERPRET=1 bf16 arithmetic is wrong, so bf16 inputs
are widened to fp32 there (exactly).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from coir_kernels import duplicates, reference

# Read by @triton.jit at decoration time: the kernels are interpreted (run on CPU
# tensors) exactly when this was set before this package's import.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
# Triton's own library (tl.max, tl.sum, ...) was decorated when triton.language was
# first imported -- possibly earlier, by torch._dynamo or transformers. Interpreted
# kernels cannot call compiled library functions, nor the other way round.
LIBRARY_INTERPRETED = type(tl.standard.max).__name__ == "InterpretedFunction"

MAX_TOKENS = 64  # tokens per query / item of max-sim scoring (BLIP-2 has 32)


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

    Copies of a gallery row (HAS_COPIES, `coir_kernels/duplicates.py`) take their
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
def _add_offset(acc, offset_ptr, cols, num_gallery, HAS_OFFSET: tl.constexpr):
    """The (BLOCK_Q, BLOCK_G) tile plus each column's score offset (fp32, one rounding:
    `coir_kernels/offsets.py`), after copies took their group's score; as is without one.
    Every kernel adds it to the tile `_score_tile` gave it, so pass 1's positive
    scores stay pass 2's bits."""
    if HAS_OFFSET:
        acc = acc + tl.load(offset_ptr + cols, mask=cols < num_gallery, other=0.0)[None, :]
    return acc


def offset_operand(offset: torch.Tensor | None, stand_in: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(offset_ptr, HAS_OFFSET) of a launch: the offset as a contiguous fp32 (G,) tensor on
    `stand_in`'s device, or `stand_in` (an fp32 tensor the kernel then never reads)."""
    if offset is None:
        return stand_in, False
    return offset.to(device=stand_in.device, dtype=torch.float32).contiguous(), True


def check_device(query: torch.Tensor, gallery: torch.Tensor) -> None:
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
            "triton (and coir_kernels.triton_ops) is first imported to run them on CPU"
        )


def operands(query: torch.Tensor, gallery: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str, int, int]:
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


class CopyScores(NamedTuple):
    """What the kernels need of a gallery's duplicate groups: each row's group
    (int64, -1 for none), each group's score per query ((parts,) Q, groups fp32), the
    number of groups, and whether there are any (HAS_COPIES; else placeholders)."""

    group: torch.Tensor
    scores: torch.Tensor
    count: int
    present: bool


def copies_of(scored: torch.Tensor, found_in: torch.Tensor, queries: tuple[torch.Tensor, ...]) -> CopyScores:
    """Duplicate groups of `found_in` (the gallery as given); their scores are those
    of `scored` (the gallery as scored, e.g. normalised) against each of `queries`,
    one block per query tensor when there are several."""
    groups = duplicates.find(found_in)
    if groups is None:
        placeholder = torch.zeros(len(queries), 1, device=scored.device).squeeze(0)
        return CopyScores(placeholder[..., 0].long(), placeholder, 0, False)
    first = scored[groups.first]
    scores = torch.stack([reference.similarity(x, first) for x in queries])
    return CopyScores(groups.group.contiguous(), scores.squeeze(0) if len(queries) == 1 else scores,
                       len(groups.first), True)


def supports_tokens(count: int) -> bool:
    return 1 <= count <= MAX_TOKENS and count & (count - 1) == 0


@dataclass
class Launch:
    """One problem's operands and grid, as every launcher needs them: the (rows, D)
    operands in their dot dtype, the block sizes (`meta`, passed as constexprs),
    warps, how many programs to aim for, and the query and gallery block counts."""

    q: torch.Tensor
    g: torch.Tensor
    precision: str
    s_tok: int
    t_tok: int
    meta: dict
    warps: int
    programs: int
    num_qb: int
    num_gb: int

    @property
    def strides(self) -> tuple[int, int, int, int]:
        return self.q.stride(0), self.q.stride(1), self.g.stride(0), self.g.stride(1)

    def splits(self) -> int:
        """Programs per query block along grid axis 1."""
        return _grid_split(self.programs, self.num_qb, self.num_gb)

    def constants(self, tokens: bool = True) -> dict:
        """The constexprs and launch options every kernel takes (token counts for the
        kernels that score max-sim)."""
        extra = dict(S_TOK=self.s_tok, T_TOK=self.t_tok) if tokens else {}
        return dict(PRECISION=self.precision, num_warps=self.warps, **extra, **self.meta)


def plan(op: str, query: torch.Tensor, gallery: torch.Tensor, config: dict | None,
         prepared: tuple | None = None) -> Launch:
    """The launch of `op` ("rank" or "topk") for query x gallery: operands (or the
    `prepared` result of `operands`), then `config` or `block_config`'s blocks."""
    check_device(query, gallery)
    q, g, precision, s_tok, t_tok = prepared or operands(query, gallery)
    meta = dict(config or block_config(op, query.shape[0], gallery.shape[0], q.shape[1], q.dtype, q.device,
                                       s_tok, t_tok))
    programs, warps = meta.pop("programs"), meta.pop("num_warps")
    return Launch(q, g, precision, s_tok, t_tok, meta, warps, programs,
                  triton.cdiv(query.shape[0], meta["BLOCK_Q"]), triton.cdiv(gallery.shape[0], meta["BLOCK_G"]))
