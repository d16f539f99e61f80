"""The retrieval core: one public function per operation.

Each function dispatches to an implementation: `reference` (chunked torch in fp32,
any device; its counting loops compiled by torch.compile on CPU), `two-stage`
(`coir_kernels/two_stage.py`: scores in bf16, only the items within the bf16 error
bound of a positive rescored in fp32; the same counts, for rank counts and the
mixed sweep) or `triton` (fused kernels in `coir_kernels/triton_ops/`: single vectors
(Q, D) x (G, D), BLIP-2's multi-vector max-sim (Q, S, D) x (G, T, D) with S, T
powers of two up to TRITON_MAX_TOKENS, top-K up to TRITON_MAX_K). The choice
comes from the `impl` argument, else the COIR_KERNELS environment variable, else
`auto`: Triton when the tensors are on CUDA and triton imports (each operation
first checked against the reference on a small problem, `coir_kernels/self_check.py`),
two-stage for rank counts on a CPU that multiplies bf16 natively (avx512_bf16 or
AMX), the reference otherwise. `used()` says what scored in this process. Inputs the
kernels do not cover (other token counts, k > TRITON_MAX_K) run the reference
whatever was asked. `impl="triton"` on CPU tensors runs the kernels in
Triton's interpreter when TRITON_INTERPRET=1 (tests), and is an error otherwise.
Triton is imported lazily, on first use. The harness scores and ranks only
through these functions.

Score offsets: `target_rank_counts` and `topk_excluding` take `offset` (G,) float32,
finite, on the gallery's device: item g then scores fl32(s(q, g) + offset[g]) in
every implementation (`coir_kernels/offsets.py`), s the score it computes without one, and
everything below reads those sums (counts, the positive's returned score, top-K's
scores and order). Two-stage adds it to the low-precision and the exact scores and
widens its band by the additions' rounding. `mixed_rank_counts` takes none.
`bank_statistics` gives the query-bank statistics hubness offsets are made of
(log-sum-exp and top-k mean per gallery item, `coir_kernels/bank.py`: torch only, any
device, one chunked pass over the bank).

Per-query candidate galleries (`candidate_rank_counts`, `candidate_topk`,
`candidate_mixed_rank_counts`, `coir_kernels/candidates.py`): each query ranks its own
subset of one pool (`Candidates`), read through per-query masks over the pool's
scores; scored with exact per-pair scores (float64 sums rounded once), torch only.

Ties and copies, the same in every implementation:
- "equal" counts the gallery items whose score is exactly the positive's (the
  positive itself and the excluded item never count); the metrics' tie rule
  decides where they rank.
- Exact duplicates (gallery rows that are bitwise identical, -0.0 read as +0.0;
  for multi-vector items all T rows) are one item for scoring: each group is
  scored once per query, from its first row (summed in float64 and rounded once,
  so the bits do not depend on the call or the rank), and every member takes that score
  (`coir_kernels/duplicates.py`). So a copy of a positive is always "equal", never
  "greater" or "less", copies of any item fall on the same side of every positive,
  and top-K lists copies in gallery order. Without this the counts would depend on
  the machine: a matmul may give one row two different last bits at two positions
  (BLAS blocking, SIMD lanes, tensor-core tiles), so a copy could score one ulp
  above the positive on one CPU and tie on another.
- With an offset, identical rows still share their group's one score s, and each
  member then adds its own offset. Copies are one item only when their offsets are
  equal too (as values: -0.0 reads as +0.0): those keep identical bits, so the rules
  above hold for them. Copies with different offsets are different items, ordered
  by their offsets on every machine (fp32 addition is monotone: equal s, a larger
  offset never sums lower), never by the last bits of a matmul.
- Items that merely score close to a positive are compared by the fp32 bits the
  implementation computes: where two scores differ by about one rounding error,
  another implementation or machine may order them the other way (the tests keep
  their problems clear of such near-ties).
"""

from __future__ import annotations

import functools
import os

import torch

from coir_kernels import bank as _bank
from coir_kernels import candidates as _candidates
from coir_kernels import offsets, reference, self_check, two_stage
from coir_kernels.candidates import Candidates

IMPLEMENTATIONS = ("reference", "two-stage", "triton")
TRITON_MAX_K = 64  # = triton_ops.MAX_K, kept here so dispatch needs no triton import
TRITON_MAX_TOKENS = 64  # = triton_ops.MAX_TOKENS
TWO_STAGE_MAX_DIM = 2048  # auto picks two-stage up to this dimension (CLIP bigG's 1280 fits)


def _tokens_covered(x: torch.Tensor) -> bool:
    count = x.shape[1] if x.ndim == 3 else 1
    return x.ndim in (2, 3) and 1 <= count <= TRITON_MAX_TOKENS and count & (count - 1) == 0


@functools.cache
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def cpu_multiplies_bf16() -> bool:
    """avx512_bf16 or AMX: a bf16 GEMM runs at several times the fp32 rate."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


_USED: dict[str, str] = {}


def used() -> dict[str, str]:
    """{operation: implementation} of the calls made in this process (the last of each)."""
    return dict(_USED)


def _pick(impl: str | None, query: torch.Tensor, gallery: torch.Tensor, k: int | None = None,
          op: str = "", two_stage: bool = False, offset: torch.Tensor | None = None) -> str:
    choice = _choose(impl, query, gallery, k, two_stage)
    # the compiled kernels on a GPU, not asked for by name: checked once (the interpreter is tested);
    # the kernels with offsets are other kernels, checked on their own
    checked = op if offset is None else op + self_check.WITH_OFFSET
    if choice == "triton" and not impl and query.is_cuda and not self_check.passes(checked, query.device):
        choice = "reference"  # warned once by self_check
    _USED[op] = choice
    return choice


def _choose(impl: str | None, query: torch.Tensor, gallery: torch.Tensor, k: int | None, two_stage: bool) -> str:
    choice = impl or os.environ.get("COIR_KERNELS", "auto")
    if choice != "auto" and choice not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown kernel implementation {choice!r}; choose from auto, "
            + ", ".join(IMPLEMENTATIONS)
        )
    covered = _tokens_covered(query) and _tokens_covered(gallery) and (k is None or k <= TRITON_MAX_K)
    on_cuda = query.is_cuda and gallery.is_cuda
    if choice == "two-stage":
        return "two-stage" if two_stage else "reference"
    if choice == "auto":
        if covered and on_cuda and _triton_importable():
            return "triton"
        # the bf16 error bound grows with D: past TWO_STAGE_MAX_DIM it covers most of the gallery
        # (the identity gallery of a dense similarity method, harness/similarity/dense.py)
        two_stage = two_stage and gallery.shape[-1] <= TWO_STAGE_MAX_DIM
        return "two-stage" if two_stage and not on_cuda and cpu_multiplies_bf16() else "reference"
    if choice == "triton":
        if not covered:
            return "reference"
        if not on_cuda and not _interpreting():
            raise RuntimeError(
                "impl='triton' needs CUDA tensors; to run the Triton kernels on CPU set "
                "TRITON_INTERPRET=1 before triton is imported (slow: for tests)"
            )
        if not _triton_importable():
            raise RuntimeError("impl='triton' needs the triton package")
    return choice


def _triton():
    from coir_kernels import triton_ops

    return triton_ops


def target_rank_counts(
    query: torch.Tensor,
    gallery: torch.Tensor,
    positives: torch.Tensor,
    exclude: torch.Tensor,
    impl: str | None = None,
    offset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each query and each of its positives (gallery indices, -1 pad): how many
    gallery items score strictly higher, how many score the same, and the
    positive's score; `exclude` (one index per query, -1 for none) takes no part.
    `offset` (G,): each item's score is fl32(score + offset[item])."""
    _check_pair(query, gallery)
    offsets.check(offset, gallery)
    choice = _pick(impl, query, gallery, op="target_rank_counts", two_stage=True, offset=offset)
    extra = _offset_argument(offset)
    if choice == "triton":
        return _triton().target_rank_counts(query, gallery, positives, exclude, **extra)
    if choice == "two-stage":
        return two_stage.target_rank_counts(query, gallery, positives, exclude, two_stage.format_for(query),
                                            **extra)
    return reference.target_rank_counts(query, gallery, positives, exclude, **extra)


def mixed_rank_counts(
    parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    gallery: torch.Tensor,
    weights: torch.Tensor,
    positives: torch.Tensor,
    exclude: torch.Tensor,
    impl: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`target_rank_counts` of the mixed queries w0*q + w1*t + w2*f (each part and the
    gallery L2-normalised) for every row of `weights` (W, 3) in one pass: (W, Q, P) each."""
    check_mixed(parts, gallery, weights)
    choice = _pick(impl, parts[0], gallery, op="mixed_rank_counts", two_stage=True)
    if choice == "triton":
        return _triton().mixed_rank_counts(parts, gallery, weights, positives, exclude)
    if choice == "two-stage":
        return two_stage.mixed_rank_counts(parts, gallery, weights, positives, exclude, two_stage.format_for(gallery))
    return reference.mixed_rank_counts(parts, gallery, weights, positives, exclude)


def check_mixed(parts: tuple[torch.Tensor, ...], gallery: torch.Tensor, weights: torch.Tensor) -> None:
    """What `mixed_rank_counts` refuses (ValueError)."""
    for part in parts:
        _check_pair(part, gallery)
    if gallery.ndim != 2 or any(part.ndim != 2 for part in parts):
        raise ValueError("mixing is defined for single-vector (Q, D) and (G, D) embeddings")
    if weights.ndim != 2 or weights.shape[1] != 3:
        raise ValueError(f"weights must be (W, 3), got {tuple(weights.shape)}")


def implementation(op: str, query: torch.Tensor, gallery: torch.Tensor, k: int | None = None) -> str:
    """The implementation `op` ("target_rank_counts", "topk_excluding" or
    "mixed_rank_counts") takes for these tensors without an offset, recorded in `used()`
    as a call would record it: for a caller that runs that implementation's steps
    itself (a gallery split across ranks, harness/evaluation/sharded.py)."""
    _check_pair(query, gallery)
    return _pick(None, query, gallery, k, op=op, two_stage=op != "topk_excluding")


def topk_excluding(
    query: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    exclude: torch.Tensor,
    impl: str | None = None,
    offset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (scores, gallery indices) per query, best first, `exclude` removed;
    ties broken by gallery order. `offset` (G,): each item's score is
    fl32(score + offset[item])."""
    _check_pair(query, gallery)
    offsets.check(offset, gallery)
    extra = _offset_argument(offset)
    if _pick(impl, query, gallery, k, op="topk_excluding", offset=offset) == "triton":
        return _triton().topk_excluding(query, gallery, k, exclude, **extra)
    return reference.topk_excluding(query, gallery, k, exclude, **extra)


def candidate_rank_counts(query: torch.Tensor, gallery: torch.Tensor, candidates: Candidates,
                          positives: torch.Tensor, exclude: torch.Tensor, offset: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`target_rank_counts` within each query's own candidates (a subset of the pool
    `gallery`; `coir_kernels/candidates.py`): a positive outside them counts as padding."""
    _check_pair(query, gallery)
    offsets.check(offset, gallery)
    _USED["candidate_rank_counts"] = "reference"
    return _candidates.candidate_rank_counts(query, gallery, candidates, positives, exclude, offset)


def candidate_topk(query: torch.Tensor, gallery: torch.Tensor, candidates: Candidates, k: int,
                   exclude: torch.Tensor, offset: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`topk_excluding` within each query's own candidates; (nan, -1) past the last one."""
    _check_pair(query, gallery)
    offsets.check(offset, gallery)
    _USED["candidate_topk"] = "reference"
    return _candidates.candidate_topk(query, gallery, candidates, k, exclude, offset)


def candidate_mixed_rank_counts(parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor], gallery: torch.Tensor,
                                weights: torch.Tensor, candidates: Candidates, positives: torch.Tensor,
                                exclude: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`mixed_rank_counts` within each query's own candidates: (W, Q, P) each."""
    check_mixed(parts, gallery, weights)
    _USED["candidate_mixed_rank_counts"] = "reference"
    return _candidates.candidate_mixed_rank_counts(parts, gallery, weights, candidates, positives, exclude)


def bank_statistics(bank: torch.Tensor, gallery: torch.Tensor, beta: float, k: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per gallery item g, over a query bank (B, D) and gallery (G, D), both
    L2-normalised by the caller (scores are plain dot products s(b, g)):
    (lse, topk_mean), each (G,) float64, lse[g] = logsumexp_b(beta * s(b, g)) and
    topk_mean[g] the mean of the k largest s(b, g), k <= B. One chunked pass over
    the bank (`coir_kernels/bank.py`). Hubness offsets: -lse / beta (querybank
    normalisation, inverted softmax), -topk_mean / 2 (CSLS)."""
    return _bank.bank_statistics(bank, gallery, beta, k)


def _offset_argument(offset: torch.Tensor | None) -> dict:
    """The implementations' keyword for an offset; without one they are called as before."""
    return {} if offset is None else {"offset": offset}


def _check_pair(query: torch.Tensor, gallery: torch.Tensor) -> None:
    shapes_ok = query.ndim in (2, 3) and gallery.ndim in (2, 3)
    if not shapes_ok or query.shape[-1] != gallery.shape[-1]:
        raise ValueError(
            f"query {tuple(query.shape)} and gallery {tuple(gallery.shape)} must be "
            "(Q, D) or (Q, T, D) and (G, D) or (G, T, D) with the same D"
        )
    if gallery.shape[0] == 0:
        raise ValueError("the gallery is empty")
