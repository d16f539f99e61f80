"""The counting loops of the CPU reference, fused by torch.compile.

Ranking by counts means, for every query row, counting the gallery scores above
(and equal to) a per-row threshold. In eager torch that is several passes over
the scores (compare, cast, sum, again for equality); compiled, it is one
vectorised loop that reads each score once. For the weight sweep the gain is
larger still: the mixed score w0*d0 + w1*d1 + w2*d2 of every weight triple is
formed and compared in registers, and never written to memory.

Both counts travel in one int32 per row: greater * 2**16 + greater_or_equal.
Inductor then emits a single reduction loop (two separate reductions of one
expression make it write the expression out first, ten times slower); callers
keep blocks under 2**15 columns so the packing cannot overflow.

CUDA tensors, and machines where compiling fails (no C++ compiler), run the same
arithmetic eagerly. `COIR_COMPILE=0` forces the eager path. The comparison counts
(`count_above`, `count_band`) also run eagerly until a process has counted
EAGER_SCORES scores: compiling costs seconds once per process, more than a small
evaluation's whole counting, and both paths give the same integers (comparisons
are exact). The mixed sweep always compiles: its mixed score is one formula, with
one rounding, for every caller.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings

import torch

# Columns per counting call: both counts stay below 2**15, so the packed int32 holds.
MAX_COLUMNS = 1 << 14
# Scores a process counts eagerly before compiling pays (eager: about 3 passes over
# them; compiling: seconds, once).
EAGER_SCORES = 1 << 27
_eager_left = EAGER_SCORES
_SHIFT = 1 << 16


def _packed_counts(scores: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """scores (..., C) against threshold (..., 1) -> (...,) packed counts."""
    above = (scores > threshold).to(torch.int32) * _SHIFT
    return (above + (scores >= threshold).to(torch.int32)).sum(-1, dtype=torch.int32)


def _mixed(differences: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(W, R, C) mixed score differences w0*d0 + w1*d1 + w2*d2, the same formula
    (and rounding) for every caller."""
    d0, d1, d2 = differences[0][None], differences[1][None], differences[2][None]
    w = weights[:, :, None, None]
    return (d0 * w[:, 0] + d1 * w[:, 1]) + d2 * w[:, 2]


def _packed_band_counts(scores: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Low-precision scores (..., C) against fp32 bounds (..., 1): packed counts of
    scores above `high` and at least `low`, compared in fp32."""
    wide = scores.float()
    above = (wide > high).to(torch.int32) * _SHIFT
    return (above + (wide >= low).to(torch.int32)).sum(-1, dtype=torch.int32)


def _packed_mixed_counts(differences: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """differences (3, R, C) of each part's score to the positive's, weights (W, 3)
    -> (W, R) packed counts of the mixed differences above / at least 0."""
    # The mixed expression is written twice on purpose: a shared node would be
    # materialised as a (W, R, C) buffer; two copies fuse into one loop.
    above = (_mixed(differences, weights) > 0).to(torch.int32) * _SHIFT
    at_least = (_mixed(differences, weights) >= 0).to(torch.int32)
    return (above + at_least).sum(-1, dtype=torch.int32)


def _compile_enabled() -> bool:
    return os.environ.get("COIR_COMPILE", "1") not in ("", "0")


@functools.cache
def _compiled(fn):
    return torch.compile(fn, dynamic=True)


_broken: set[str] = set()


def compile_from_now() -> None:
    """The comparison counts compile at their next call, whatever was counted before:
    for benchmarks, whose warm-up call must leave the steady state to time."""
    global _eager_left
    _eager_left = 0


def _run_comparison(fn, scores: torch.Tensor, *bounds: torch.Tensor) -> torch.Tensor:
    """`_run` for the exact comparison counts: eager while this process has counted
    fewer than EAGER_SCORES scores."""
    global _eager_left
    if _eager_left > 0:
        _eager_left -= scores.numel()
        return fn(scores, *bounds)
    return _run(fn, scores, *bounds)


def _run(fn, *args: torch.Tensor) -> torch.Tensor:
    """The compiled `fn` on CPU tensors, eager elsewhere or if compiling fails."""
    if args[0].is_cuda or not _compile_enabled() or fn.__name__ in _broken:
        return fn(*args)
    try:
        return _compiled(fn)(*args)
    except Exception as err:  # noqa: BLE001 -- any compiler failure: the eager path is exact too
        _broken.add(fn.__name__)
        warnings.warn(
            f"torch.compile failed ({type(err).__name__}: {err}); counting eagerly (slower). "
            "Install a C++ compiler, or set COIR_COMPILE=0 to skip the attempt.",
            stacklevel=3,
        )
        return fn(*args)


def unpack(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(greater, greater_or_equal) as int64 from packed counts."""
    packed = packed.long()
    return packed // _SHIFT, packed % _SHIFT


def count_above(scores: torch.Tensor, threshold: torch.Tensor, one_thread: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of scores (R, C): how many entries are > and >= threshold (R,);
    nan scores count in neither. Returns (greater, greater_or_equal), int64 (R,).
    `one_thread`: count on the calling thread alone (`on_one_thread`)."""
    greater = torch.zeros(scores.shape[0], dtype=torch.int64, device=scores.device)
    at_least = torch.zeros_like(greater)
    column = threshold.to(scores.dtype)[:, None]
    one_thread = one_thread and not scores.is_cuda
    fn = _packed_counts_one_thread if one_thread else _packed_counts
    with on_one_thread() if one_thread else contextlib.nullcontext():
        for start in range(0, scores.shape[1], MAX_COLUMNS):
            g, ge = unpack(_run_comparison(fn, scores[:, start : start + MAX_COLUMNS], column))
            greater += g
            at_least += ge
    return greater, at_least


def _packed_counts_one_thread(scores: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """`_packed_counts`, compiled on its own while torch has one thread: Inductor fixes a
    kernel's thread count when it compiles it."""
    return _packed_counts(scores, threshold)


@contextlib.contextmanager
def on_one_thread():
    """Torch on one thread, for counts between GEMMs on another library's threads
    (OpenBLAS's: numpy's or coir_kernels/openblas_avx512.py's): torch's OpenMP threads,
    once woken, spin-wait on the cores the next GEMM needs, and the counts then cost as
    much as the GEMMs; one thread counts a tile in a small fraction of its GEMM's time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def count_mixed_above_zero(
    differences: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """differences (3, R, C), weights (W, 3): per triple and row, how many columns
    have w . d > 0 and >= 0 (nan in any part counts in neither). int64 (W, R)."""
    shape = (weights.shape[0], differences.shape[1])
    greater = torch.zeros(shape, dtype=torch.int64, device=differences.device)
    at_least = torch.zeros_like(greater)
    w = weights.to(differences.dtype).contiguous()
    for start in range(0, differences.shape[2], MAX_COLUMNS):
        block = differences[:, :, start : start + MAX_COLUMNS].contiguous()
        g, ge = unpack(_run(_packed_mixed_counts, block, w))
        greater += g
        at_least += ge
    return greater, at_least


def mixed_scores(components: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(W, R, C) scores w0*c0 + w1*c1 + w2*c2 of components (3, R, C), by the
    formula the counts use (for the positives' own mixed scores)."""
    return _mixed(components, weights.to(components.dtype))


def count_band(scores: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of low-precision scores (R, C): how many entries are > high and >= low
    (R,) (fp32 bounds, never rounded to the scores' format). int64 (R,) each."""
    sure = torch.zeros(scores.shape[0], dtype=torch.int64, device=scores.device)
    possible = torch.zeros_like(sure)
    low, high = low.float()[:, None], high.float()[:, None]
    for start in range(0, scores.shape[1], MAX_COLUMNS):
        g, ge = unpack(_run_comparison(_packed_band_counts, scores[:, start : start + MAX_COLUMNS], low, high))
        sure += g
        possible += ge
    return sure, possible
