"""Chunked pure-torch implementations of the retrieval operations.

They are the reference that tests and benches compare the Triton kernels against,
and the implementation CPU users run. Scores are computed one query chunk at a
time, so the (Q, G) score matrix never exists whole: memory is chunk x G.
"""

from __future__ import annotations

import torch

from coir_kernels import counting, duplicates, gemm, offsets
from coir_kernels.dense_counts import rank_counts_dense  # noqa: F401 -- coir_kernels.reference.rank_counts_dense
from coir_kernels.stable_top import stable_top

# Rows of the score matrix held at once; 1024 x 1M fp32 is 4 GB, the most we allow.
_TARGET_CHUNK_BYTES = 1 << 30
# Single-vector tiles (query rows, gallery columns): None takes the shape this
# machine's GEMM runs fastest at (coir_kernels/gemm.py plan); an int fixes it.
QUERY_TILE: int | None = None
GALLERY_TILE: int | None = None
# Weight sweeps: query rows per chunk, and the fewest triples for which settling
# items that no triple can move (`_settled_columns`) pays for its pass.
SWEEP_ROWS = 128
MIN_TRIPLES_TO_SETTLE = 8
# Elements of the (Q, G', S, T) token-pair block of max-sim scoring: 256 MB of fp32.
MAXSIM_BLOCK_ELEMENTS = 64 << 20


def _query_chunk(num_gallery: int, requested: int | None) -> int:
    if requested is not None:
        return max(1, requested)
    return max(1, min(4096, _TARGET_CHUNK_BYTES // (4 * max(1, num_gallery))))


def similarity(query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """Score matrix (Q, G) in fp32, whatever the storage dtype.

    Single vectors score by inner product. Multi-vector features (BLIP-2's 32
    query tokens) score by the max over token pairs, as CoVR-2 evaluates:
    (Q, D) x (G, T, D) -> max over T; (Q, S, D) x (G, T, D) -> max over S and T.
    """
    q, g = query.float(), gallery.float()
    if q.ndim == 2 and g.ndim == 2:
        return q @ g.T
    if q.ndim == 2:
        q = q[:, None, :]
    if g.ndim == 2:
        g = g[:, None, :]
    out = torch.empty(q.shape[0], g.shape[0], device=q.device)
    step = max(1, MAXSIM_BLOCK_ELEMENTS // max(1, q.shape[0] * q.shape[1] * g.shape[1]))
    for start in range(0, g.shape[0], step):
        pairs = torch.einsum("qsd,gtd->qgst", q, g[start : start + step])
        out[:, start : start + step] = pairs.amax(dim=(-1, -2))
    return out


def rowwise_similarity(query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """Scores of row i of `query` against row i of `gallery`, (N,), by the rules of
    `similarity`: summed in float64 and rounded to fp32 once, so a pair's score does
    not depend on which other pairs share the call (or the rank that computes it)."""
    q, g = query.double(), gallery.double()
    q = q[:, None, :] if q.ndim == 2 else q
    g = g[:, None, :] if g.ndim == 2 else g
    return torch.einsum("nsd,ntd->nst", q, g).amax(dim=(-1, -2)).float()


def exact_similarity(query: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`similarity` summed in float64, rounded to fp32 once: a pair's bits whatever shares the call."""
    q, r = query.double(), rows.double()
    if q.ndim == 2 and r.ndim == 2:
        return (q @ r.T).float()
    q = q if q.ndim == 3 else q[:, None, :]
    r = r if r.ndim == 3 else r[:, None, :]
    out = torch.empty(q.shape[0], r.shape[0], device=q.device)
    step = max(1, (MAXSIM_BLOCK_ELEMENTS // 4) // max(1, r.shape[0] * q.shape[1] * r.shape[1]))  # float64 block
    for start in range(0, q.shape[0], step):
        out[start : start + step] = torch.einsum("qsd,gtd->qgst", q[start : start + step], r).amax(dim=(-1, -2))
    return out


def target_rank_counts(
    query: torch.Tensor,
    gallery: torch.Tensor,
    positives: torch.Tensor,
    exclude: torch.Tensor,
    chunk: int | None = None,
    offset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`rank_counts_dense` over query x gallery cosine-style scores (inner products),
    each item's `offset` (G,) added if given (`coir_kernels/offsets.py`).

    query (Q, D) or (Q, S, D), gallery (G, D) or (G, T, D), positives (Q, P)
    gallery indices (-1 pad), exclude (Q,) gallery index removed from each query's
    ranking (-1 for none; CIRR removes the query's reference image).

    Single vectors are scored in (query chunk x gallery block) tiles small enough to
    be counted while they are still in cache (one fused pass: > and >= per row).
    Each positive's score comes first, from a product of its own row; the tile
    that holds the positive then takes out what the positive's own column counted,
    whatever bits the tile gave it, and the same for the excluded item. Copies of a
    gallery row (`coir_kernels.duplicates`) all take their group's one score (then each
    its own offset), so a copy of a positive (with its offset) ties with it on any
    machine. Max-sim features take
    `_target_rank_counts_rows`.
    """
    if query.ndim == 3 or gallery.ndim == 3:
        return _target_rank_counts_rows(query, gallery, positives, exclude, chunk, offset)
    device = query.device
    greater = torch.zeros(positives.shape, dtype=torch.int64, device=device)
    equal = torch.zeros(positives.shape, dtype=torch.int64, device=device)
    pos_scores = torch.full(positives.shape, float("nan"), device=device)
    q_all, g_all = query.float(), gallery.float()
    copies = Copies(duplicates.find(gallery), g_all)
    plan = gemm.plan_for(query.shape[0], gallery.shape[0], query.shape[-1])
    step = chunk or QUERY_TILE or plan.query_rows
    for start in range(0, query.shape[0], step):
        stop = min(start + step, query.shape[0])
        pos = positives[start:stop].to(device)
        above, at_least, own = tiled_counts(q_all[start:stop], g_all, pos, exclude[start:stop].to(device), copies,
                                            offset, plan=plan)
        pad = pos < 0
        greater[start:stop] = above.masked_fill(pad, 0)
        equal[start:stop] = (at_least - above).masked_fill(pad, 0)
        pos_scores[start:stop] = own.masked_fill(pad, float("nan"))
    return greater, equal, pos_scores


def tiled_counts(q: torch.Tensor, g_all: torch.Tensor, pos: torch.Tensor, skip: torch.Tensor, copies: Copies,
                 offset: torch.Tensor | None = None, own: torch.Tensor | None = None, *, plan: gemm.Plan
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One query chunk against the gallery, tile by tile (`plan`'s GEMM and gallery
    columns: the whole problem's plan, which a chunk or a shard cannot derive):
    (items above each positive, items at least as high, the positives' scores), the
    positive and the excluded item not counted. `own` (R, P) given (nan: padding):
    counted against those scores, `pos` then naming only the positives in this
    gallery (a shard's, -1 elsewhere: harness/evaluation/sharded.py)."""
    rows = torch.arange(q.shape[0], device=q.device)
    group_scores = copies.scores(q)
    given = own is not None
    if not given:
        own = torch.stack([offsets.at(copies.own(q, g_all, pos[:, p], group_scores), offset, pos[:, p])
                           for p in range(pos.shape[1])], 1)
    lives = [rows[~torch.isnan(own[:, p]) if given else pos[:, p] >= 0] for p in range(pos.shape[1])]
    above = torch.zeros(pos.shape, dtype=torch.int64, device=q.device)
    at_least = torch.zeros_like(above)
    buffer = gemm.TileBuffer()
    columns = GALLERY_TILE or plan.gallery_columns
    one_thread = plan.library != "torch"  # the GEMMs on OpenBLAS's threads (counting.on_one_thread)
    for block in range(0, g_all.shape[0], columns):
        tile = copies.apply(gemm.scores(q, g_all[block : block + columns], buffer, plan.library), block,
                            group_scores)
        tile = offsets.add(tile, offset, block)
        for p, live in enumerate(lives):
            if len(live) == len(rows):
                g_, ge = counting.count_above(tile, own[:, p], one_thread)
            else:  # soft-target columns are mostly padding: count only real positives
                g_, ge = counting.count_above(tile[live], own[live, p], one_thread)
            above[live, p] += g_
            at_least[live, p] += ge
        # the positive itself and the excluded item take no part: take out what
        # their columns counted, from the very scores the tile gave them
        for item in (pos, skip[:, None].expand_as(pos)):
            at, p = torch.nonzero((item >= block) & (item < block + tile.shape[1]), as_tuple=True)
            there = tile[at, item[at, p] - block]
            above[at, p] -= (there > own[at, p]).long()
            at_least[at, p] -= (there >= own[at, p]).long()
    return above, at_least, own


class Copies:
    """The duplicate groups of a gallery, applied to score tiles: every member's
    column takes its group's score (the group's first row against each query)."""

    def __init__(self, groups: duplicates.Groups | None, gallery: torch.Tensor | None,
                 first_rows: torch.Tensor | None = None):
        """`first_rows` given: the groups' first rows when they are not all in `gallery`
        (a shard of a larger gallery, harness/evaluation/sharded.py)."""
        self.groups = groups
        if groups is not None:
            self.first_rows = gallery[groups.first] if first_rows is None else first_rows
            self.members = groups.members()

    def scores(self, query: torch.Tensor) -> torch.Tensor | None:
        """(rows, R) fp32: each group's score for each query row (independent of the
        rows in the call: shards and chunks give a copy the same bits)."""
        return None if self.groups is None else exact_similarity(query, self.first_rows)

    def own(self, query, gallery, index, group_scores) -> torch.Tensor:
        """Scores of query row i against gallery row index[i] (-1 pad: any value)."""
        index = index.clamp(min=0)
        score = rowwise_similarity(query, gallery[index])
        if self.groups is None:
            return score
        group = self.groups.group[index]
        rows = torch.nonzero(group >= 0).squeeze(1)
        score[rows] = group_scores[rows, group[rows]]
        return score

    def apply(self, tile: torch.Tensor, block: int, group_scores) -> torch.Tensor:
        """tile (rows, C) holds gallery columns block ... block + C - 1: its members'
        columns replaced by their group's score, in place."""
        if self.groups is None:
            return tile
        low, high = torch.searchsorted(self.members, torch.tensor([block, block + tile.shape[1]],
                                                                  device=self.members.device))
        columns = self.members[low:high]
        if len(columns):
            tile[:, columns - block] = group_scores[:, self.groups.group[columns]]
        return tile


def _target_rank_counts_rows(
    query: torch.Tensor,
    gallery: torch.Tensor,
    positives: torch.Tensor,
    exclude: torch.Tensor,
    chunk: int | None = None,
    offset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`target_rank_counts` from whole score rows: each query chunk's rows against the
    full gallery (copies taking their group's score), the positives' scores read
    from those very rows."""
    num_queries, num_gallery = query.shape[0], gallery.shape[0]
    copies = Copies(duplicates.find(gallery), gallery)
    step = _query_chunk(num_gallery, chunk)
    greater = torch.zeros(positives.shape, dtype=torch.int64, device=query.device)
    equal = torch.zeros(positives.shape, dtype=torch.int64, device=query.device)
    pos_scores = torch.full(positives.shape, float("nan"), device=query.device)
    for start in range(0, num_queries, step):
        stop = min(start + step, num_queries)
        scores = copies.apply(similarity(query[start:stop], gallery), 0, copies.scores(query[start:stop]))
        scores = offsets.add(scores, offset)
        rows = torch.arange(stop - start, device=scores.device)
        skip = exclude[start:stop].to(scores.device)
        skip_scores = scores[rows, skip.clamp(min=0)]
        for p in range(positives.shape[1]):  # P is small (a few soft targets)
            pos = positives[start:stop, p].to(scores.device)
            own = scores[rows, pos.clamp(min=0)]
            above, at_least = counting.count_above(scores, own)
            # the positive is >= itself; the excluded item takes no part
            at_least -= 1
            above -= ((skip >= 0) & (skip_scores > own)).long()
            at_least -= ((skip >= 0) & (skip_scores >= own)).long()
            pad = pos < 0
            greater[start:stop, p] = above.masked_fill(pad, 0)
            equal[start:stop, p] = (at_least - above).masked_fill(pad, 0)
            pos_scores[start:stop, p] = own.masked_fill(pad, float("nan"))
    return greater, equal, pos_scores


def topk_excluding(
    query: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    exclude: torch.Tensor,
    chunk: int | None = None,
    copies: Copies | None = None,
    offset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k gallery items per query, the excluded item removed; scores plus each item's
    `offset` (G,) if given.

    Returns (scores (Q, k), indices (Q, k)), best first. Ties are broken by gallery
    order (lower index first), so the result is deterministic; copies of a row
    score the same (`coir_kernels.duplicates`) and so come in gallery order; k is capped
    at the number of candidates.
    """
    num_queries, num_gallery = query.shape[0], gallery.shape[0]
    k = min(k, num_gallery - (1 if bool((exclude >= 0).any()) else 0))
    copies = copies or Copies(duplicates.find(gallery), gallery)
    step = _query_chunk(num_gallery, chunk)
    values, indices = [], []
    for start in range(0, num_queries, step):
        stop = min(start + step, num_queries)
        scores = copies.apply(similarity(query[start:stop], gallery), 0, copies.scores(query[start:stop]))
        scores = offsets.add(scores, offset)
        valid = _valid_mask(scores.shape, exclude[start:stop], scores.device)
        v, i = stable_top(scores.masked_fill(~valid, float("-inf")), k)
        values.append(v)
        indices.append(i)
    if num_queries == 0:
        return torch.empty(0, k), torch.empty(0, k, dtype=torch.long)
    return torch.cat(values), torch.cat(indices)


def _valid_mask(shape: torch.Size, exclude: torch.Tensor, device: torch.device) -> torch.Tensor:
    valid = torch.ones(shape, dtype=torch.bool, device=device)
    rows = torch.nonzero(exclude >= 0).squeeze(1)
    valid[rows, exclude[rows]] = False
    return valid


def mixed_rank_counts(
    parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    gallery: torch.Tensor,
    weights: torch.Tensor,
    positives: torch.Tensor,
    exclude: torch.Tensor,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank counts for mixed queries m = w0*q + w1*t + w2*f, for every weight triple.

    parts = (q, t, f), each (Q, D), L2-normalised here, as is the gallery (G, D);
    weights (W, 3). Returns (greater, equal, positive_scores), each (W, Q, P), with
    the meaning of `rank_counts_dense`; positive_scores is w . (q.g, t.g, f.g) of
    the positive (m is not renormalised: scaling a query does not change its
    ranking). m.g = w0 q.g + w1 t.g + w2 f.g, so the three score blocks of a query
    chunk are computed once and serve every triple: per triple the work is three
    multiply-adds and a compare per gallery item instead of a D-long dot product.

    Each item is compared through its score differences to the positive,
    w . (s_item - s_pos) against 0: the positive's own difference is exactly 0,
    whatever the rounding of the weighted sum, and so is a copy's (copies take
    their group's scores, `coir_kernels.duplicates`). The excluded item's differences
    are nan, so it counts nowhere.
    """
    q, t, f = (torch.nn.functional.normalize(p.float(), dim=-1) for p in parts)
    g = torch.nn.functional.normalize(gallery.float(), dim=-1)
    copies = Copies(duplicates.find(gallery), g)
    num_queries, num_gallery = q.shape[0], g.shape[0]
    # rows per chunk: the three score blocks stay in cache while every triple reads them,
    # and few rows let more gallery items be settled for the whole chunk
    step = chunk or max(1, min(SWEEP_ROWS, (4 << 20) // (12 * max(1, num_gallery))))
    shape = (weights.shape[0], num_queries, positives.shape[1])
    greater = torch.zeros(shape, dtype=torch.long, device=g.device)
    equal = torch.zeros(shape, dtype=torch.long, device=g.device)
    pos_scores = torch.full(shape, float("nan"), device=g.device)
    w = weights.float().to(g.device)
    for start in range(0, num_queries, step):
        stop = min(start + step, num_queries)
        rows = torch.arange(stop - start, device=g.device)
        # one matmul for the three parts: (3R, D) x (D, G) -> (3, R, G)
        three = torch.cat([q[start:stop], t[start:stop], f[start:stop]])
        blocks = copies.apply(three @ g.T, 0, copies.scores(three)).view(3, len(rows), -1)
        skip = exclude[start:stop].to(g.device)
        for p in range(positives.shape[1]):
            pos = positives[start:stop, p].to(g.device)
            live = rows[pos >= 0]  # soft-target columns are mostly padding: skip those rows
            if len(live) == 0:
                continue
            # the last column may take the blocks in place: no later column reads them
            above, at_least, own = _mixed_column_counts(blocks, pos, live, skip, w, p == positives.shape[1] - 1)
            greater[:, start + live, p] = above
            equal[:, start + live, p] = at_least - above - 1  # the positive is >= itself
            pos_scores[:, start + live, p] = counting.mixed_scores(own[:, :, None], w)[:, :, 0]
    return greater, equal, pos_scores


def _mixed_column_counts(blocks: torch.Tensor, pos: torch.Tensor, live: torch.Tensor, skip: torch.Tensor,
                         w: torch.Tensor, last: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For one positive column of a chunk's (3, R, G) score blocks: per triple and live
    row, the items with w . d > 0 and >= 0 (d: their three score differences to the
    positive), and the positive's three scores (3, L)."""
    whole = len(live) == blocks.shape[1]
    sub = blocks if whole else blocks[:, live]  # a copy unless whole
    own = sub[:, torch.arange(len(live), device=blocks.device), pos[live]]  # (3, L)
    differences = sub.sub_(own[:, :, None]) if (not whole or last) else sub - own[:, :, None]
    skipped = skip[live]
    at = torch.nonzero(skipped >= 0).squeeze(1)
    differences[:, at, skipped[at]] = float("nan")
    settled = _settled_columns(differences, w)
    if settled is None:
        return (*counting.count_mixed_above_zero(differences, w), own)
    # evaluate only the items some triple could place either way
    keep, beaten_by = settled
    above, at_least = counting.count_mixed_above_zero(differences[:, :, keep], w)
    return above + beaten_by, at_least + beaten_by, own


def _settled_columns(
    differences: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Gallery items whose place no weight triple can change, for weights >= 0.

    With every w_k >= 0 and some w_k > 0, an item whose three score differences to
    the positive are all below -tiny has w . d < 0 for every triple (each term is
    <= 0, the positive-weight term strictly below 0: tiny keeps it from
    underflowing to 0), and one with all three above +tiny has w . d > 0. Items
    settled so for every row of the chunk need no per-triple work. Returns (keep:
    (G,) columns still to evaluate, beaten_by: (R,) items among the dropped ones
    that beat the positive under every triple), or None when the weights allow no
    such shortcut (a negative weight) or too few triples make it worth a pass.
    """
    positive = weights > 0
    if weights.shape[0] < MIN_TRIPLES_TO_SETTLE or (weights < 0).any() or not positive.any(1).all():
        return None
    tiny = torch.finfo(torch.float32).tiny / weights[positive].min()
    below = differences.amax(0) < -tiny  # nan (the excluded item) settles nothing
    above = differences.amin(0) > tiny
    keep = ~(below | above).all(0)
    return keep, (above & ~keep).sum(1)
