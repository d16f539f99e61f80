"""Exact rank counts at low-precision speed: score in bf16 (or fp16), rescore in fp32
only the items whose low-precision score could be on either side of a positive.

The error bound. Let q, g be fp32 vectors of length D, s = fl32(q . g) the fp32
score the reference computes (any summation order), and s~ the low-precision score:
q and g rounded to the format (unit roundoff u: 2^-8 for bf16, 2^-11 for fp16), their
products formed exactly and summed in fp32 (what oneDNN's bf16 GEMM on CPU and
tensor cores on GPU do), the sum rounded to the format. With u32 = 2^-24 and
gamma = D u32 / (1 - D u32) (the standard bound of an fp32 sum of D terms, Higham
Thm 3.1, any order, FMA or not):

    rounding the inputs:   |sum q^ g^ - q . g|  <= sum |q_i g_i| ((1+u)^2 - 1)
                                                <= (2u + u^2) |q| |g|          (Cauchy-Schwarz)
    fp32 accumulation:     |fl32(sum q^ g^) - sum q^ g^| <= gamma (1+u)^2 |q| |g|
    rounding the output:   |s~ - fl32(...)|     <= u (1+gamma) (1+u)^2 |q| |g|
    the reference's own:   |s - q . g|          <= gamma |q| |g|

so |s~ - s| <= kappa(D, u) |q| |g| with kappa the sum of the four factors (`kappa`),
and with G = max over the gallery of |g| one margin per query row, E = kappa |q| G.
An item with s~ > own + E has s > own (it is above the positive in the reference);
one with s~ < own - E has s < own; only items inside [own - E, own + E] are rescored
in fp32, by the reference's own functions. Max-sim scores are maxima of such
products: each token pair's error is within the bound of its norms, so the max is
within the largest (E from the largest token norms).

What the reference computes for a rescored item is one fp32 rounding of q . g; our
rescoring rounds it once too, perhaps in another order, so the two may differ in the
last bits: counts differ only where an item's fp32 score and the positive's are
within about 2 gamma |q||g| of each other, where fp32 itself gives a machine-dependent
order (coir_kernels/__init__.py, "Ties and copies"). Copies of a gallery row take their
group's one fp32 score here as in the reference, so a copy of a positive always ties.

A score offset per item (`coir_kernels/offsets.py`) is added in fp32 to the low-precision
scores and to the exact ones alike, and the band's half-width grows by what those
additions (and the band's ends) can round, 8 u32 (|q| G + E + max|offset|): the
bound then holds between the offset scores (`offsets.widened_margin` derives it).
"""

from __future__ import annotations

import torch

from coir_kernels import counting, duplicates, gemm, offsets, reference

# float32: the fp32 GEMM itself, whose scores differ from a rescoring's by at most 2 gamma
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11, torch.float32: 0.0}
FP32_UNIT_ROUNDOFF = 2.0**-24
# Past this fraction of (query, item) pairs inside the band, rescoring costs more than
# the low-precision GEMM saves (a pair rescored costs tens of GEMM multiply-adds): the
# rest is scored in fp32. Spread-out unit vectors put almost no pairs in the bf16 band;
# clustered real embeddings (a small model's, at D=64) can put many there.
DENSE_BAND = 0.01
# The mixed sweep: an unsettled item costs what the reference pays for every item (W
# mixed scores) and more, so past this fraction the reference takes the remaining rows.
DENSE_BAND_MIXED = 0.05
# Single-vector tiles: None takes the shape this machine's GEMM runs fastest at in
# the scoring format (coir_kernels/gemm.py plan); an int fixes it.
QUERY_TILE: int | None = None
GALLERY_TILE: int | None = None
# Bytes one float64 rescoring call may hold: a band can take in every pair of a tile
# (2048 x 8192 pairs; at D = 1024 that would be 256 GB of operands in one call).
EXACT_CALL_BYTES = 64 << 20


def kappa(dim: int, dtype: torch.dtype) -> float:
    """|s~ - s| <= kappa |q| |g| (the module docstring derives it)."""
    u = UNIT_ROUNDOFF[dtype]
    n_u = dim * FP32_UNIT_ROUNDOFF
    if n_u >= 1:
        raise ValueError(f"dimension {dim} too large for the fp32 summation bound")
    gamma = n_u / (1 - n_u)
    grow = (1 + u) ** 2
    return (2 * u + u * u) + gamma * grow + u * (1 + gamma) * grow + gamma


def margins(query: torch.Tensor, gallery: torch.Tensor, dtype: torch.dtype,
            offset: torch.Tensor | None = None) -> torch.Tensor:
    """E per query row (R,): kappa |q| max|g|, token norms for multi-vector rows. Slightly
    inflated (x (1 + 2^-10)) so the bound's own fp32 arithmetic cannot undercut it; with
    an `offset`, widened by the rounding of its additions (`offsets.widened_margin`)."""
    q_norm = query.float().norm(dim=-1)
    q_norm = q_norm.amax(-1) if q_norm.ndim == 2 else q_norm
    g_max = gallery.float().norm(dim=-1).max() if gallery.numel() else torch.tensor(0.0)
    bound = q_norm * g_max * (kappa(query.shape[-1], dtype) * (1 + 2.0**-10))
    return offsets.widened_margin(bound, q_norm * g_max, offset)


def format_for(tensor: torch.Tensor) -> torch.dtype:
    """fp16 on CUDA (tensor cores; its finer mantissa narrows the band), bf16 on CPU
    (what avx512_bf16 and AMX multiply)."""
    return torch.float16 if tensor.is_cuda else torch.bfloat16


class _FullPrecisionSums:
    """cuBLAS may sum fp16/bf16 products in reduced precision unless told not to; the
    bound assumes fp32 sums."""

    def __enter__(self):
        matmul = torch.backends.cuda.matmul
        self.saved = (matmul.allow_fp16_reduced_precision_reduction, matmul.allow_bf16_reduced_precision_reduction)
        matmul.allow_fp16_reduced_precision_reduction = False
        matmul.allow_bf16_reduced_precision_reduction = False

    def __exit__(self, *exc):
        matmul = torch.backends.cuda.matmul
        matmul.allow_fp16_reduced_precision_reduction, matmul.allow_bf16_reduced_precision_reduction = self.saved


def low_precision_scores(query_lp: torch.Tensor, gallery_lp: torch.Tensor,
                         buffer: gemm.TileBuffer | None = None) -> torch.Tensor:
    """(R, C) scores in the low-precision format: a GEMM for single vectors (into
    `buffer` if given), the max over token pairs for multi-vector features; products
    summed in fp32."""
    with _FullPrecisionSums():
        return _scores(query_lp, gallery_lp, buffer)


def _scores(query_lp: torch.Tensor, gallery_lp: torch.Tensor, buffer) -> torch.Tensor:
    if query_lp.ndim == 2 and gallery_lp.ndim == 2:
        return gemm.scores(query_lp, gallery_lp, buffer)  # fp32 (after a dense band): the faster GEMM
    q = query_lp if query_lp.ndim == 3 else query_lp[:, None, :]
    g = gallery_lp if gallery_lp.ndim == 3 else gallery_lp[:, None, :]
    return torch.einsum("qsd,gtd->qgst", q, g).amax(dim=(-1, -2))


def target_rank_counts(query: torch.Tensor, gallery: torch.Tensor, positives: torch.Tensor,
                       exclude: torch.Tensor, dtype: torch.dtype = torch.bfloat16,
                       query_tile: int | None = None, gallery_tile: int | None = None,
                       offset: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`coir_kernels.reference.target_rank_counts`, the same counts, scored in `dtype`; each
    item's `offset` (G,) added if given."""
    copies = reference.Copies(duplicates.find(gallery), gallery.float())
    return counts_against(query, gallery, positives, exclude, copies, None, dtype, query_tile, gallery_tile,
                          offset)


def counts_against(query: torch.Tensor, gallery: torch.Tensor, positives: torch.Tensor, exclude: torch.Tensor,
                   copies, own: torch.Tensor | None = None, dtype: torch.dtype = torch.bfloat16,
                   query_tile: int | None = None, gallery_tile: int | None = None,
                   offset: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The counts of `target_rank_counts` with the copies given and, if `own` (Q, P)
    is given, against those positive scores (nan: padding): a gallery shard counted
    against positives that may live in another shard (harness/evaluation/sharded.py);
    `positives` and `exclude` then name the items of this shard that take no part
    (-1: none here). float32 as `dtype` scores in fp32, rescoring only near-ties.
    `offset` (G,): this gallery's items' offsets (a given `own` already holds the
    positives')."""
    device = query.device
    greater = torch.zeros(positives.shape, dtype=torch.int64, device=device)
    equal = torch.zeros_like(greater)
    pos_scores = torch.full(positives.shape, float("nan"), device=device)
    q32, g32 = query.float(), gallery.float()
    q_lp, g_lp = q32.to(dtype), g32.to(dtype)
    margin = margins(q32, g32, dtype, offset)
    multi = query.ndim == 3 or gallery.ndim == 3
    tiles = None if multi else gemm.plan_for(query.shape[0], gallery.shape[0], query.shape[-1], dtype)
    rows_per_tile = query_tile or (max(1, reference.MAXSIM_BLOCK_ELEMENTS // max(1, _pairs(query, gallery) * 64))
                                   if multi else QUERY_TILE or tiles.query_rows)
    columns = gallery_tile or (64 if multi else GALLERY_TILE or tiles.gallery_columns)
    buffer = gemm.TileBuffer()
    if dtype != torch.float32 and _dense_band(q32, q_lp, g32, g_lp, positives, exclude, margin, copies, own,
                                              min(256, rows_per_tile), columns, offset):
        dtype, q_lp, g_lp, margin = torch.float32, q32, g32, margins(q32, g32, torch.float32, offset)
    scored = rescored = 0
    for start in range(0, query.shape[0], rows_per_tile):
        stop = min(start + rows_per_tile, query.shape[0])
        chunk = _Chunk(q32[start:stop], q_lp[start:stop], g32, positives[start:stop].to(device),
                       exclude[start:stop].to(device), margin[start:stop], copies,
                       None if own is None else own[start:stop].to(device), offset)
        before = rescored
        for block in range(0, gallery.shape[0], columns):
            tile = low_precision_scores(chunk.q_lp, g_lp[block : block + columns], buffer)
            chunk.count_block(tile, block)
            scored, rescored = scored + tile.numel(), before + chunk.rescored
            if dtype != torch.float32 and rescored > DENSE_BAND * scored:
                # counts so far are exact whatever the format: go on in fp32 with its own (2 gamma) band
                dtype, q_lp, g_lp = torch.float32, q32, g32
                margin = margins(q32, g32, dtype, offset)
                chunk.narrow(q32[start:stop], margin[start:stop])
        pad = torch.isnan(chunk.own)
        greater[start:stop] = chunk.above.masked_fill(pad, 0)
        equal[start:stop] = (chunk.at_least - chunk.above).masked_fill(pad, 0)
        pos_scores[start:stop] = chunk.own
    return greater, equal, pos_scores


def _dense_band(q32, q_lp, g32, g_lp, positives, exclude, margin, copies, own, rows: int,
                columns: int, offset=None) -> bool:
    """Whether more than DENSE_BAND of a probe's (query, item) pairs fall inside a band:
    the first `rows` queries against the first `columns` items, no rescoring."""
    probe = _Chunk(q32[:rows], q_lp[:rows], g32, positives[:rows].to(q32.device), exclude[:rows].to(q32.device),
                   margin[:rows], copies, None if own is None else own[:rows].to(q32.device), offset)
    tile = offsets.add(low_precision_scores(probe.q_lp, g_lp[:columns]).float(), offset)
    inside = sum(((tile[live] >= probe.low[live, p, None]) & (tile[live] <= probe.high[live, p, None])).sum().item()
                 for p, live in enumerate(probe.lives))
    return inside > DENSE_BAND * tile.numel()


def exact_pairs_per_call(query: torch.Tensor, gallery: torch.Tensor) -> int:
    """How many (row, item) pairs one float64 rescoring call takes: EXACT_CALL_BYTES of
    operands and products (rows of both sides, and the token-pair products)."""
    q_tokens = query.shape[1] if query.ndim == 3 else 1
    g_tokens = gallery.shape[1] if gallery.ndim == 3 else 1
    per_pair = 8 * ((q_tokens + g_tokens) * query.shape[-1] + q_tokens * g_tokens)
    return max(1, EXACT_CALL_BYTES // per_pair)


def _pairs(query: torch.Tensor, gallery: torch.Tensor) -> int:
    s = query.shape[1] if query.ndim == 3 else 1
    t = gallery.shape[1] if gallery.ndim == 3 else 1
    return s * t


class _Chunk:
    """One query chunk's running counts over the gallery blocks."""

    def __init__(self, q32, q_lp, g32, pos, skip, margin, copies, own=None, offset=None):
        self.q32, self.q_lp, self.g32, self.pos, self.skip, self.copies = q32, q_lp, g32, pos, skip, copies
        self.offset = offset
        self.group_scores = copies.scores(q32)
        if own is None:
            own = torch.stack([offsets.at(copies.own(q32, g32, pos[:, p], self.group_scores), offset, pos[:, p])
                               for p in range(pos.shape[1])], 1)
            own = own.masked_fill(pos < 0, float("nan"))
        self.own = own
        self.low = self.own - margin[:, None]
        self.high = self.own + margin[:, None]
        self.above = torch.zeros(pos.shape, dtype=torch.int64, device=pos.device)
        self.at_least = torch.zeros_like(self.above)
        self.lives = [torch.nonzero(~torch.isnan(own[:, p])).squeeze(1) for p in range(pos.shape[1])]
        self.rescored = 0  # (row, item) pairs inside a band so far

    def narrow(self, q_scoring: torch.Tensor, margin: torch.Tensor) -> None:
        """Score the remaining blocks from `q_scoring` with bands of half-width `margin`."""
        self.q_lp = q_scoring
        self.low = self.own - margin[:, None]
        self.high = self.own + margin[:, None]

    def count_block(self, tile: torch.Tensor, block: int) -> None:
        """tile (R, C) low-precision scores of gallery columns block ... block + C - 1
        (their offsets added here, in fp32)."""
        if self.offset is not None:
            tile = offsets.add(tile.float(), self.offset, block)
        for p, live in enumerate(self.lives):
            if len(live) == 0:
                continue
            scores = tile if len(live) == tile.shape[0] else tile[live]
            sure, possible = counting.count_band(scores, self.low[live, p], self.high[live, p])
            self.above[live, p] += sure
            self.at_least[live, p] += sure
            undecided = live[possible > sure]
            if len(undecided):
                self._rescore(tile, block, undecided, p)
            self._take_out(tile, block, live, p)

    def _rescore(self, tile: torch.Tensor, block: int, rows: torch.Tensor, p: int) -> None:
        """Items inside the band of rows' positive p: their fp32 scores decide."""
        band = tile[rows].float()
        inside = (band >= self.low[rows, p, None]) & (band <= self.high[rows, p, None])
        at, column = torch.nonzero(inside, as_tuple=True)
        self.rescored += len(at)
        row, item = rows[at], column + block
        keep = (item != self.pos[row, p]) & (item != self.skip[row])  # the two take no part
        row, item = row[keep], item[keep]
        exact = self._exact(row, item)
        own = self.own[row, p]
        self.above[:, p].index_add_(0, row, (exact > own).long())
        self.at_least[:, p].index_add_(0, row, (exact >= own).long())

    def _exact(self, row: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """fp32 scores of (row, item) pairs, as the reference has them, offsets added."""
        score = _exact_scores(self.q32, self.g32, self.copies, self.group_scores, row, item)
        return offsets.at(score, self.offset, item)

    def _take_out(self, tile: torch.Tensor, block: int, live: torch.Tensor, p: int) -> None:
        """The positive and the excluded item were counted in `sure` if their
        low-precision score was above the band: take that out (inside it they were
        left out of the rescoring)."""
        for item in (self.pos[live, p], self.skip[live]):
            inside = (item >= block) & (item < block + tile.shape[1])
            rows = live[inside]
            if len(rows) == 0:
                continue
            there = tile[rows, item[inside] - block].float()
            self.above[rows, p] -= (there > self.high[rows, p]).long()
            self.at_least[rows, p] -= (there > self.high[rows, p]).long()


def mixed_rank_counts(parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor], gallery: torch.Tensor,
                      weights: torch.Tensor, positives: torch.Tensor, exclude: torch.Tensor,
                      dtype: torch.dtype = torch.bfloat16, rows_per_chunk: int = 256
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`coir_kernels.reference.mixed_rank_counts`, its three score blocks in `dtype`.

    With weights >= 0, an item whose three low-precision differences to the positive
    all exceed their margins (d~_k > E_k) is above the positive for every triple
    (each exact difference is > 0), and one with all three below -E_k is below for
    every triple. Only the other items are rescored in fp32 (three products each) and
    counted per triple by the reference's formula. Negative weights settle nothing:
    the fp32 reference runs instead.
    """
    if (weights < 0).any() or not (weights > 0).any(1).all():
        return reference.mixed_rank_counts(parts, gallery, weights, positives, exclude)
    q, t, f = (torch.nn.functional.normalize(p.float(), dim=-1) for p in parts)
    g = torch.nn.functional.normalize(gallery.float(), dim=-1)
    copies = reference.Copies(duplicates.find(gallery), g)
    g_lp = g.to(dtype)
    margin = kappa(g.shape[-1], dtype) * (1 + 2.0**-10) + torch.finfo(torch.float32).tiny  # unit vectors
    w = weights.float().to(g.device)
    shape = (w.shape[0], q.shape[0], positives.shape[1])
    greater = torch.zeros(shape, dtype=torch.long, device=g.device)
    equal = torch.zeros_like(greater)
    pos_scores = torch.full(shape, float("nan"), device=g.device)
    for start in range(0, q.shape[0], rows_per_chunk):
        stop = min(start + rows_per_chunk, q.shape[0])
        if not _mixed_chunk(q, t, f, g, g_lp, copies, positives, exclude, w, margin, dtype, start, stop,
                            (greater, equal, pos_scores)):
            # most items unsettled: each needs all W triples anyway, the reference's loop is cheaper
            rest = reference.mixed_rank_counts(tuple(part[start:] for part in parts), gallery, weights,
                                               positives[start:], exclude[start:])
            for out, part in zip((greater, equal, pos_scores), rest):
                out[:, start:] = part.to(out.device)
            break
    return greater, equal, pos_scores


def _mixed_chunk(q, t, f, g, g_lp, copies, positives, exclude, w, margin, dtype, start, stop, outputs) -> bool:
    """Counts of query rows start ... stop - 1 into `outputs`; False (nothing written
    for a column left) when a column's unsettled items exceed DENSE_BAND_MIXED."""
    greater, equal, pos_scores = outputs
    three = torch.stack([q[start:stop], t[start:stop], f[start:stop]])  # (3, R, D)
    blocks = low_precision_scores(three.reshape(-1, g.shape[1]).to(dtype), g_lp).view(3, stop - start, -1)
    group_scores = [copies.scores(part) for part in three]
    for p in range(positives.shape[1]):
        pos = positives[start:stop, p].to(g.device)
        live = torch.nonzero(pos >= 0).squeeze(1)
        if len(live) == 0:
            continue
        own = torch.stack([copies.own(three[k][live], g, pos[live], None if group_scores[k] is None
                                      else group_scores[k][live]) for k in range(3)])  # (3, L)
        counted = _mixed_column(blocks[:, live], three[:, live], g, copies,
                                [None if s is None else s[live] for s in group_scores], own, pos[live],
                                exclude[start:stop].to(g.device)[live], w, margin,
                                DENSE_BAND_MIXED * len(live) * g.shape[0])
        if counted is None:
            return False
        above, at_least = counted
        greater[:, start + live, p] = above
        equal[:, start + live, p] = at_least - above
        pos_scores[:, start + live, p] = counting.mixed_scores(own[:, :, None], w)[:, :, 0]
    return True


def _mixed_column(blocks_lp, three, g, copies, group_scores, own, pos, skip, w, margin, limit):
    """Counts (W, L) of one positive column: settled items from the low-precision
    blocks, the rest from their fp32 scores; None when more than `limit` are unsettled."""
    d = blocks_lp.float() - own[:, :, None]  # (3, L, G)
    rows = torch.arange(d.shape[1], device=d.device)
    for item in (pos, skip):  # the positive and the excluded item take no part
        has = item >= 0
        d[:, rows[has], item[has]] = float("nan")
    settled_above = (d.amin(0) > margin).sum(1)  # nan compares False: never settled
    unsettled = ~((d.amin(0) > margin) | (d.amax(0) < -margin)) & ~torch.isnan(d).any(0)
    at, item = torch.nonzero(unsettled, as_tuple=True)
    if len(at) > limit:
        return None
    exact = torch.stack([_exact_scores(three[k], g, copies, group_scores[k], at, item) for k in range(3)])
    differences = exact - own[:, at]  # (3, N)
    mixed = counting.mixed_scores(differences[:, None, :], w)[:, 0, :]  # (W, N)
    above = torch.zeros(w.shape[0], d.shape[1], dtype=torch.long, device=d.device)
    at_least = torch.zeros_like(above)
    above.index_add_(1, at, (mixed > 0).long())
    at_least.index_add_(1, at, (mixed >= 0).long())
    return above + settled_above, at_least + settled_above


def _exact_scores(query, gallery, copies, group_scores, row, item):
    """fp32 scores of (row, item) pairs, as the reference has them: a copy takes its
    group's score, any other item one product of its own row. Gathered and scored
    EXACT_CALL_BYTES at a time: a wide band (or a mixed column's unsettled items) can
    hold every pair of a tile."""
    score = torch.empty(len(row), device=row.device)
    step = exact_pairs_per_call(query, gallery)
    for start in range(0, len(row), step):
        pairs = slice(start, start + step)
        score[pairs] = reference.rowwise_similarity(query[row[pairs]], gallery[item[pairs]])
    groups = copies.groups
    if groups is not None:
        group = groups.group[item]
        member = torch.nonzero(group >= 0).squeeze(1)
        score[member] = group_scores[row[member], group[member]]
    return score
