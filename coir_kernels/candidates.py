"""Per-query candidate galleries: each query ranks its own subset of one pool.

Some benchmarks give every query its own candidates rather than one shared gallery
(EgoCVR's `global_idx` / `local_idx` lists, GeneCIS's per-query galleries). The pool
is embedded once; a query's candidates are a set of pool rows (`Candidates`, a
compressed row list: `starts` (Q + 1,) and `items` (N,) sorted and unique within each
row), and every operation here reads the query's scores against the whole pool
through a per-query mask, chunk by chunk. A positive that is not among its query's
candidates (or is its excluded item) can never be retrieved: it is padding to the
counts (nan score), so the metrics count it as a miss.

Scores are the exact per-pair scores of `reference.exact_similarity` (summed in
float64, rounded to fp32 once), plus `offset[item]` in fp32 where given: a pair's bits
do not depend on which other items share its call, so a candidate that appears in
several queries' galleries scores each query as it would alone, bitwise identical
copies tie, and the counts are the same on every machine up to float64 rounding.
These galleries are small (a few thousand candidates at most per query), so the
float64 products cost little next to embedding the pool.

    candidates = Candidates.from_lists([[0, 3, 5], [1, 3]], num_items=6)
    greater, equal, pos_scores = candidate_rank_counts(query, pool, candidates, positives, exclude)
    scores, items = candidate_topk(query, pool, candidates, k, exclude)        # items -1 past the end
    greater, equal, pos_scores = candidate_mixed_rank_counts(parts, pool, weights, candidates, positives, exclude)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from coir_kernels import counting, reference
from coir_kernels.dense_counts import rank_counts_dense

MASK_ELEMENTS = 1 << 24  # scores (and mask entries) held per chunk of queries


@dataclass(frozen=True)
class Candidates:
    """Each query's candidate pool rows: row i is items[starts[i]:starts[i + 1]], or the
    whole pool where whole[i] (nothing stored for it: a global setting costs no memory)."""

    starts: torch.Tensor  # (Q + 1,) int64, non-decreasing, starts[0] = 0
    items: torch.Tensor  # (N,) int64 pool rows, sorted and unique within each query's row
    num_items: int  # the pool's size G
    whole: torch.Tensor | None = None  # (Q,) bool: the query's candidates are the whole pool

    @classmethod
    def from_lists(cls, rows: Sequence[Sequence[int] | None], num_items: int) -> Candidates:
        """From one list of pool rows per query (None: the whole pool); duplicates within
        a list are one candidate. ValueError names the first query with a row outside the pool."""
        starts, pieces = [0], []
        for i, row in enumerate(rows):
            unique = torch.empty(0, dtype=torch.long) if row is None else \
                torch.unique(torch.as_tensor(row, dtype=torch.long).reshape(-1))
            if len(unique) and (unique[0] < 0 or unique[-1] >= num_items):
                bad = int(unique[0] if unique[0] < 0 else unique[-1])
                raise ValueError(f"query {i}: candidate rows must lie in [0, {num_items}), got {bad}")
            pieces.append(unique)
            starts.append(starts[-1] + len(unique))
        items = torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.long)
        whole = torch.tensor([row is None for row in rows], dtype=torch.bool)
        return cls(torch.tensor(starts, dtype=torch.long), items, num_items, whole if whole.any() else None)

    def __len__(self) -> int:
        return self.starts.numel() - 1

    def sizes(self) -> torch.Tensor:
        """(Q,) how many candidates each query has."""
        sizes = self.starts[1:] - self.starts[:-1]
        return sizes if self.whole is None else torch.where(self.whole, self.num_items, sizes)

    def contains(self, items: torch.Tensor) -> torch.Tensor:
        """(Q,) bool: whether items[i] (a pool row, -1 for none) is a candidate of query i."""
        out = torch.zeros(len(self), dtype=torch.bool)
        for i in torch.nonzero(items >= 0).squeeze(1).tolist():
            row = self.items[self.starts[i]: self.starts[i + 1]]
            out[i] = bool(self.whole is not None and self.whole[i]) or bool(torch.isin(items[i], row))
        return out

    def mask(self, start: int, stop: int, device: torch.device | None = None) -> torch.Tensor:
        """(stop - start, G) bool: which pool rows are candidates of queries start ... stop - 1."""
        lo, hi = int(self.starts[start]), int(self.starts[stop])
        counts = self.starts[start + 1: stop + 1] - self.starts[start:stop]
        rows = torch.repeat_interleave(torch.arange(stop - start), counts)
        out = torch.zeros(stop - start, self.num_items, dtype=torch.bool)
        out[rows, self.items[lo:hi]] = True
        if self.whole is not None:
            out[self.whole[start:stop]] = True
        return out if device is None else out.to(device)


def check(candidates: Candidates, num_queries: int, num_items: int) -> None:
    """ValueError unless `candidates` has one row per query over a pool of `num_items`."""
    if len(candidates) != num_queries or candidates.num_items != num_items:
        raise ValueError(f"candidates for {len(candidates)} queries over a pool of {candidates.num_items} items, "
                         f"scored against {num_queries} queries and a pool of {num_items}")


def _step(num_items: int, rows: int = 1) -> int:
    return max(1, MASK_ELEMENTS // max(1, rows * num_items))


def _scores(query: torch.Tensor, pool: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
    scores = reference.exact_similarity(query, pool)
    return scores if offset is None else scores + offset.float()[None, :]


def _valid(candidates: Candidates, start: int, stop: int, exclude: torch.Tensor, device) -> torch.Tensor:
    """The chunk's mask without each query's excluded item."""
    valid = candidates.mask(start, stop, device)
    skip = exclude[start:stop].to(device)
    at = torch.nonzero(skip >= 0).squeeze(1)
    valid[at, skip[at]] = False
    return valid


def _own_positives(valid: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Positives that are candidates of their query (and not excluded); the rest -1."""
    index = positives.clamp(min=0)
    return torch.where((positives >= 0) & valid.gather(1, index), positives, -1)


def candidate_rank_counts(
    query: torch.Tensor,
    pool: torch.Tensor,
    candidates: Candidates,
    positives: torch.Tensor,
    exclude: torch.Tensor,
    offset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`target_rank_counts` within each query's candidates: for each positive (pool
    rows, -1 pad), the candidates scoring strictly higher, those scoring the same
    (itself not counted) and its score; nan and zero counts for a positive that is
    not a candidate of its query or is its `exclude` item (a miss for the metrics)."""
    check(candidates, query.shape[0], pool.shape[0])
    greater = torch.zeros(positives.shape, dtype=torch.long)
    equal = torch.zeros(positives.shape, dtype=torch.long)
    pos_scores = torch.full(positives.shape, float("nan"))
    step = _step(pool.shape[0])
    for start in range(0, query.shape[0], step):
        stop = min(start + step, query.shape[0])
        valid = _valid(candidates, start, stop, exclude, pool.device)
        pos = _own_positives(valid, positives[start:stop].to(pool.device))
        counts = rank_counts_dense(_scores(query[start:stop], pool, offset), valid, pos)
        greater[start:stop], equal[start:stop], pos_scores[start:stop] = (c.cpu() for c in counts)
    return greater, equal, pos_scores


def candidate_topk(
    query: torch.Tensor,
    pool: torch.Tensor,
    candidates: Candidates,
    k: int,
    exclude: torch.Tensor,
    offset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's k best candidates (scores, pool rows), best first, ties broken by
    pool order; a query with fewer than k candidates is padded with (nan, -1)."""
    check(candidates, query.shape[0], pool.shape[0])
    scores_out = torch.full((query.shape[0], k), float("nan"))
    items_out = torch.full((query.shape[0], k), -1, dtype=torch.long)
    step = _step(pool.shape[0])
    for start in range(0, query.shape[0], step):
        stop = min(start + step, query.shape[0])
        valid = _valid(candidates, start, stop, exclude, pool.device)
        scores = _scores(query[start:stop], pool, offset).masked_fill(~valid, float("-inf"))
        # stable: equal scores keep pool order; non-candidates sort last and are cut below
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
        top = scores.gather(1, order)
        real = torch.arange(order.shape[1], device=pool.device)[None, :] < valid.sum(1, keepdim=True)
        width = order.shape[1]
        scores_out[start:stop, :width] = torch.where(real, top, float("nan")).cpu()
        items_out[start:stop, :width] = torch.where(real, order, -1).cpu()
    return scores_out, items_out


def candidate_mixed_rank_counts(
    parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    pool: torch.Tensor,
    weights: torch.Tensor,
    candidates: Candidates,
    positives: torch.Tensor,
    exclude: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`mixed_rank_counts` within each query's candidates: (W, Q, P) each, for the
    mixed queries w0*q + w1*t + w2*f (parts and pool L2-normalised here). As the
    reference compares them (coir_kernels/reference.py, mixed_rank_counts), each
    candidate's three score differences to the positive are weighted and compared
    with 0 (coir_kernels/counting.py), so the positive's own difference is exactly 0;
    non-candidates' differences are nan and count nowhere."""
    q, t, f = (torch.nn.functional.normalize(p.float(), dim=-1) for p in parts)
    pool = torch.nn.functional.normalize(pool.float(), dim=-1)
    check(candidates, q.shape[0], pool.shape[0])
    w = weights.float().to(pool.device)
    shape = (weights.shape[0], q.shape[0], positives.shape[1])
    greater = torch.zeros(shape, dtype=torch.long)
    equal = torch.zeros(shape, dtype=torch.long)
    pos_scores = torch.full(shape, float("nan"))
    step = _step(pool.shape[0], 3)
    for start in range(0, q.shape[0], step):
        stop = min(start + step, q.shape[0])
        valid = _valid(candidates, start, stop, exclude, pool.device)
        pos = _own_positives(valid, positives[start:stop].to(pool.device))
        three = torch.cat([q[start:stop], t[start:stop], f[start:stop]])
        blocks = reference.exact_similarity(three, pool).view(3, stop - start, -1)
        for p in range(pos.shape[1]):
            live = torch.nonzero(pos[:, p] >= 0).squeeze(1)
            if len(live) == 0:
                continue
            sub = blocks[:, live]
            own = sub[:, torch.arange(len(live)), pos[live, p]]  # (3, L)
            differences = (sub - own[:, :, None]).masked_fill(~valid[live][None], float("nan"))
            above, at_least = counting.count_mixed_above_zero(differences, w)
            greater[:, start + live, p] = above.cpu()
            equal[:, start + live, p] = (at_least - above - 1).cpu()  # the positive is >= itself
            pos_scores[:, start + live, p] = counting.mixed_scores(own[:, :, None], w)[:, :, 0].cpu()
    return greater, equal, pos_scores
