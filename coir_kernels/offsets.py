"""Per-gallery-item score offsets: the score of item g for a query becomes
fl32(s(q, g) + offset[g]), s the score each implementation computes without one.

The offset is added once, in fp32, after everything else that makes s: copies of a
row (`coir_kernels/duplicates.py`) take their group's one s, then each its own offset.
fp32 addition rounds to nearest, which is monotone: for a fixed offset a higher s
never gives a lower sum, and for a fixed s a higher offset never does. So copies
with equal offsets keep identical bits (they still tie), copies with different
offsets are ordered by their offsets on every machine, and the counts' rules
(coir_kernels/__init__.py) read the sums exactly as they read plain scores.

Hubness corrections are the use: querybank normalisation / inverted softmax
(offset = -lse / beta) and CSLS (offset = -topk_mean / 2), from the query-bank
statistics of `coir_kernels/bank.py`.
"""

from __future__ import annotations

import torch

# fp32's unit roundoff: |fl32(x) - x| <= FP32_UNIT_ROUNDOFF |x|
FP32_UNIT_ROUNDOFF = 2.0**-24


def check(offset: torch.Tensor | None, gallery: torch.Tensor) -> None:
    """Raise a clear error unless offset is None or (G,) float32, finite, on the gallery's device."""
    if offset is None:
        return
    if not isinstance(offset, torch.Tensor):
        raise TypeError(f"offset must be a torch.Tensor or None, got {type(offset).__name__}")
    if offset.ndim != 1 or offset.shape[0] != gallery.shape[0]:
        raise ValueError(f"offset must be 1-D with one entry per gallery item ({gallery.shape[0]}), "
                         f"got shape {tuple(offset.shape)}")
    if offset.dtype != torch.float32:
        raise TypeError(f"offset must be float32, got {offset.dtype}")
    if offset.device != gallery.device:
        raise ValueError(f"offset must be on the gallery's device ({gallery.device}), got {offset.device}")
    if not bool(torch.isfinite(offset).all()):
        raise ValueError("offset must be finite (no nan or inf)")


def add(tile: torch.Tensor, offset: torch.Tensor | None, block: int = 0) -> torch.Tensor:
    """tile (R, C) fp32 of gallery columns block ... block + C - 1, their offsets added
    in place (one fp32 rounding each); the tile as is without an offset."""
    if offset is not None:
        tile.add_(offset[block : block + tile.shape[1]])
    return tile


def at(scores: torch.Tensor, offset: torch.Tensor | None, items: torch.Tensor) -> torch.Tensor:
    """scores (N,) fp32 of gallery items (N,) (-1: padding, any value), plus their offsets."""
    return scores if offset is None else scores + offset[items.clamp(min=0)]


def widened_margin(bound: torch.Tensor, norm: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
    """A low-precision band's half-width E (R,) per query row, widened by what the
    offset's fp32 additions can round (`coir_kernels/two_stage.py`); E as is without an offset.

    Let s~ be an item's low-precision score, s its exact fp32 score, |s~ - s| <= E, and
    N = `norm` (R,) (|q| max |g|, so |s| <= N + E and |s~| <= N + 2E), O = max |offset|,
    u = 2^-24. The band compares L = fl32(s~ + o) with own' = fl32(s_pos + o_pos), and
    the rescoring gives s' = fl32(s + o). Each addition rounds once:
        |L - (s~ + o)| <= u (N + 2E + O),   |s' - (s + o)| <= u (N + E + O),
    so |L - s'| <= E + 3u (N + E + O). The band's ends fl32(own' -+ E') round too, by
    at most u (|own'| + E') <= 2u (N + E + O). With E' = E + 8u (N + E + O) an item with
    L > fl32(own' + E') has s' >= L - E - 3u (...) > own' + E' - 2u (...) - E - 3u (...)
    = own' + 3u (N + E + O) > own' (the 3u to spare cover E''s own fp32 arithmetic), and
    one with L < fl32(own' - E') has s' < own': only the band's items need rescoring.
    """
    if offset is None:
        return bound
    largest = offset.abs().max().to(bound.dtype) if offset.numel() else torch.zeros((), dtype=bound.dtype)
    return bound + 8 * FP32_UNIT_ROUNDOFF * (norm + bound + largest.to(bound.device))
