"""Chunked pure-torch implementations of the retrieval operations.

They are the reference that tests and benches compare the Triton kernels against,
and the implementation CPU users run. Scores are computed one query chunk at a
time, so the (Q, G) score matrix never exists whole: memory is chunk x G.
"""

from __future__ import annotations

import torch

# Rows of the score matrix held at once; 1024 x 1M fp32 is 4 GB, the most we allow.
_TARGET_CHUNK_BYTES = 1 << 30


def _query_chunk(num_gallery: int, requested: int | None) -> int:
    if requested is not None:
        return max(1, requested)
    return max(1, min(4096, _TARGET_CHUNK_BYTES // (4 * max(1, num_gallery))))


def _scores(query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    # fp32 accumulation whatever the storage dtype, so ranks do not depend on it.
    return query.float() @ gallery.float().T


def rank_counts_dense(
    scores: torch.Tensor, valid: torch.Tensor, positives: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank statistics of chosen candidates inside each row of a score matrix.

    scores (Q, C), valid (Q, C) bool (candidates that take part in the ranking),
    positives (Q, P) long candidate indices, -1 for padding; each must be a valid
    candidate (the caller removes excluded items from the positives).
    Returns (greater, equal, positive_scores), each (Q, P):
    greater = valid candidates scoring strictly above the positive,
    equal = valid candidates other than the positive itself scoring exactly the same,
    positive_scores = the positive's own score (nan for padding).
    """
    pad = positives < 0
    index = positives.clamp(min=0)
    pos_scores = scores.gather(1, index)
    masked = scores.masked_fill(~valid, float("nan"))  # nan compares False both ways
    greater = torch.empty_like(positives)
    equal = torch.empty_like(positives)
    for p in range(positives.shape[1]):  # P is small (a few soft targets)
        column = pos_scores[:, p : p + 1]
        greater[:, p] = (masked > column).sum(1)
        is_valid_self = valid.gather(1, index[:, p : p + 1]).squeeze(1)
        equal[:, p] = (masked == column).sum(1) - is_valid_self.long()
    greater = greater.masked_fill(pad, 0)
    equal = equal.masked_fill(pad, 0)
    return greater, equal, pos_scores.masked_fill(pad, float("nan"))


def target_rank_counts(
    query: torch.Tensor,
    gallery: torch.Tensor,
    positives: torch.Tensor,
    exclude: torch.Tensor,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`rank_counts_dense` over query x gallery cosine-style scores (inner products).

    query (Q, D), gallery (G, D), positives (Q, P) gallery indices (-1 pad),
    exclude (Q,) gallery index removed from each query's ranking (-1 for none;
    CIRR removes the query's reference image).
    """
    num_queries, num_gallery = query.shape[0], gallery.shape[0]
    step = _query_chunk(num_gallery, chunk)
    out = [], [], []
    for start in range(0, num_queries, step):
        stop = min(start + step, num_queries)
        scores = _scores(query[start:stop], gallery)
        valid = _valid_mask(scores.shape, exclude[start:stop], scores.device)
        for acc, part in zip(out, rank_counts_dense(scores, valid, positives[start:stop])):
            acc.append(part)
    if num_queries == 0:
        empty = positives.new_zeros(positives.shape)
        return empty, empty, torch.full(positives.shape, float("nan"))
    return tuple(torch.cat(parts) for parts in out)  # type: ignore[return-value]


def topk_excluding(
    query: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    exclude: torch.Tensor,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k gallery items per query, the excluded item removed.

    Returns (scores (Q, k), indices (Q, k)), best first. Ties are broken by gallery
    order (lower index first), so the result is deterministic; k is capped at the
    number of candidates.
    """
    num_queries, num_gallery = query.shape[0], gallery.shape[0]
    k = min(k, num_gallery - (1 if bool((exclude >= 0).any()) else 0))
    step = _query_chunk(num_gallery, chunk)
    values, indices = [], []
    for start in range(0, num_queries, step):
        stop = min(start + step, num_queries)
        scores = _scores(query[start:stop], gallery)
        valid = _valid_mask(scores.shape, exclude[start:stop], scores.device)
        scores = scores.masked_fill(~valid, float("-inf"))
        v, i = torch.sort(scores, dim=1, descending=True, stable=True)
        values.append(v[:, :k])
        indices.append(i[:, :k])
    if num_queries == 0:
        return torch.empty(0, k), torch.empty(0, k, dtype=torch.long)
    return torch.cat(values), torch.cat(indices)


def _valid_mask(shape: torch.Size, exclude: torch.Tensor, device: torch.device) -> torch.Tensor:
    valid = torch.ones(shape, dtype=torch.bool, device=device)
    rows = torch.nonzero(exclude >= 0).squeeze(1)
    valid[rows, exclude[rows]] = False
    return valid
