"""Exact duplicates in a gallery, found once so that every copy scores the same.

Real galleries hold identical embeddings (the same picture stored under two ids).
A matmul does not promise the same bits for the same row at two positions: BLAS
blocking, SIMD lanes and tensor-core tiles sum in an order that depends on where
a row sits. Left alone, a copy of a positive could score one ulp above it and
count as "greater" on one machine and "equal" on another. So every implementation
scores each group of bitwise-identical rows once (its first row, against each
query) and gives that score to every member.

Rows are compared by their bits, with -0.0 read as +0.0 (the two score the
same). Multi-vector items (G, T, D) are duplicates when all T tokens are.

Score offsets per item (`coir_kernels/offsets.py`) leave the groups as they are: the group's
one score is the plain score s, and each member adds its own offset after. Copies
with equal offsets (as values) so keep identical bits and stay one item; copies with
different offsets are different items, ordered by their offsets alone (fp32 addition
is monotone), the same on every machine.

Finding them is cheap: a hash of a few sampled elements per row (exact integer
arithmetic, so it cannot depend on the row's position either) picks the
candidates, and only rows whose hash repeats are compared in full (a shared hash
never merges two rows by itself).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Rows hashed at once: bounds the int64 temporaries (65,536 x 24 x 8 bytes = 12 MB).
_ROWS_PER_STEP = 1 << 16


@dataclass(frozen=True)
class Groups:
    """Duplicate groups of a gallery of G items, R groups of two or more rows."""

    group: torch.Tensor  # (G,) int64: the group of each row, -1 for a row with no copy
    first: torch.Tensor  # (R,) int64: the first row of each group, ascending

    def members(self) -> torch.Tensor:
        """Rows that belong to some group, ascending."""
        return torch.nonzero(self.group >= 0).squeeze(1)


def _bits(values: torch.Tensor) -> torch.Tensor:
    """(N, E) int16 or int32 view of the bits of float rows, -0.0 made +0.0 first."""
    values = torch.where(values == 0, torch.zeros((), dtype=values.dtype, device=values.device), values)
    width = values.element_size() * values.shape[1]
    return values.contiguous().view(torch.int32 if width % 4 == 0 else torch.int16)


def _sampled(rows: torch.Tensor) -> torch.Tensor:
    """Runs of 32 bytes (8 fp32 or 16 fp16 elements) from the start, middle and end of
    each row: three cache lines per row, not the whole row, and rows that share a
    prefix (padding) still differ somewhere read."""
    width, run = rows.shape[1], max(1, 32 // rows.element_size())
    starts = sorted({0, max(0, width // 2 - run // 2), max(0, width - run)})
    bounds = [(a, min(width, a + run)) for a in starts]
    merged = [bounds[0]]
    for a, b in bounds[1:]:  # runs may overlap in short rows
        merged[-1:] = [(merged[-1][0], b)] if a <= merged[-1][1] else [merged[-1], (a, b)]
    return torch.cat([rows[:, a:b] for a, b in merged], 1)


def _candidate_hash(rows: torch.Tensor) -> torch.Tensor:
    """(G,) int64, equal for identical rows: the bits of the sampled elements (as
    int32 words) times fixed coefficients, summed exactly by an integer matmul
    (|word| < 2**31, coefficient < 2**20, at most 24 terms: below 2**56, no
    overflow, and integer sums do not depend on their order)."""
    out = torch.empty(rows.shape[0], dtype=torch.int64, device=rows.device)
    coefficients = None
    for start in range(0, rows.shape[0], _ROWS_PER_STEP):
        words = _bits(_sampled(rows[start : start + _ROWS_PER_STEP])).long()
        if coefficients is None:
            coefficients = (torch.arange(words.shape[1], device=rows.device, dtype=torch.int64) * 7919 + 104729) | 1
        # CUDA has no int64 matmul; the element-wise form is the same exact sum
        out[start : start + _ROWS_PER_STEP] = (words * coefficients).sum(1) if words.is_cuda else words @ coefficients
    return out


def find(gallery: torch.Tensor) -> Groups | None:
    """The duplicate groups of gallery (G, D) or (G, T, D); None when all rows differ."""
    if gallery.shape[0] < 2:
        return None
    rows = gallery.reshape(gallery.shape[0], -1)
    hashes, order = torch.sort(_candidate_hash(rows))
    repeats = hashes[1:] == hashes[:-1]
    shared = torch.zeros(len(hashes), dtype=torch.bool, device=rows.device)
    shared[1:] |= repeats
    shared[:-1] |= repeats
    candidates = torch.sort(order[shared]).values
    if len(candidates) == 0:
        return None
    # Candidates share a hash; the full comparison decides (a shared hash alone never merges rows).
    distinct, which, sizes = torch.unique(_bits(rows[candidates]), dim=0, return_inverse=True, return_counts=True)
    repeated = sizes[which] > 1
    if not repeated.any():
        return None
    rows, labels = candidates[repeated], which[repeated]
    # Number the groups by their first row, so the result does not depend on unique's order.
    first = torch.full((len(distinct),), gallery.shape[0], dtype=torch.int64, device=rows.device)
    first = first.scatter_reduce(0, labels, rows, reduce="amin")
    used = torch.nonzero(first < gallery.shape[0]).squeeze(1)
    order = torch.argsort(first[used])
    number = torch.full((len(distinct),), -1, dtype=torch.int64, device=rows.device)
    number[used[order]] = torch.arange(len(used), device=rows.device)
    group = torch.full((gallery.shape[0],), -1, dtype=torch.int64, device=rows.device)
    group[rows] = number[labels]
    return Groups(group=group, first=first[used[order]])
