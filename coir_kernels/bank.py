"""Query-bank statistics of the gallery, the raw material of hubness corrections.

A gallery item that many queries score highly (a hub) crowds the top of every
ranking. Corrections subtract, per item, a statistic of its scores against a bank of
queries (B, D) that stands for the query distribution: querybank normalisation and
the inverted softmax the log-sum-exp, offset[g] = -lse[g] / beta; CSLS the mean of
the k best bank scores, offset[g] = -topk_mean[g] / 2. The offsets then go to
`coir_kernels.target_rank_counts(..., offset=...)` and `coir_kernels.topk_excluding`.

Both statistics come from one pass over the bank in chunks: per chunk the (chunk, G)
fp32 scores (the faster GEMM on CPU, `coir_kernels/gemm.py`) fold into a running
log-sum-exp (torch.logaddexp, float64) and a running top-k (the k best so far and
the chunk's scores, cut back to k). Memory is (chunk + k) x G scores, whatever B is.
"""

from __future__ import annotations

import math

import torch

from coir_kernels import gemm

# Score elements per bank chunk: 4M (16 MB of fp32; the float64 temporaries of the
# log-sum-exp add about 100 MB).
CHUNK_ELEMENTS = 1 << 22


def bank_statistics(bank: torch.Tensor, gallery: torch.Tensor, beta: float, k: int,
                    chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(lse, topk_mean), each (G,) float64: lse[g] = logsumexp_b(beta * s(b, g)) and
    topk_mean[g] = the mean of the k largest s(b, g), s(b, g) = bank[b] . gallery[g]
    in fp32 (both L2-normalised by the caller). `chunk`: bank rows per step (default:
    CHUNK_ELEMENTS // G)."""
    _check(bank, gallery, beta, k)
    num_bank, num_gallery = bank.shape[0], gallery.shape[0]
    step = chunk or max(1, CHUNK_ELEMENTS // max(1, num_gallery))
    g = gallery.float()
    lse = torch.full((num_gallery,), float("-inf"), dtype=torch.float64, device=gallery.device)
    best = torch.empty(0, num_gallery, device=gallery.device)
    for start in range(0, num_bank, step):
        scores = gemm.scores(bank[start : start + step].float(), g)  # (chunk, G) fp32
        lse = torch.logaddexp(lse, torch.logsumexp(scores.double() * beta, dim=0))
        both = torch.cat([best, scores])
        best = both.topk(min(k, both.shape[0]), dim=0, sorted=False).values
    return lse, best.double().mean(0)


def _check(bank: torch.Tensor, gallery: torch.Tensor, beta: float, k: int) -> None:
    if bank.ndim != 2 or gallery.ndim != 2 or bank.shape[1] != gallery.shape[1]:
        raise ValueError(f"bank {tuple(bank.shape)} and gallery {tuple(gallery.shape)} must be (B, D) and "
                         "(G, D) with the same D (single vectors)")
    if bank.device != gallery.device:
        raise ValueError(f"bank on {bank.device} but gallery on {gallery.device}")
    if not (bank.is_floating_point() and gallery.is_floating_point()):
        raise TypeError(f"bank and gallery must be floating point, got {bank.dtype} and {gallery.dtype}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= bank.shape[0]:
        raise ValueError(f"k must be an int with 1 <= k <= B = {bank.shape[0]}, got {k!r}")
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not math.isfinite(beta):
        raise ValueError(f"beta must be a finite number, got {beta!r}")
