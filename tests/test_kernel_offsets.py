"""Score offsets per gallery item (coir_kernels/offsets.py) in every implementation, and the
query-bank statistics of hubness corrections (coir_kernels/bank.py), against float64: scores
from float64 inputs, the offset added in float64. Random problems are redrawn (the
offsets of crowded items) until no score that matters (an item against a positive,
neighbours in a top-K) lies within CLEAR of another: no count depends on a CPU's last
bits. Exact problems (integer, dyadic) make every sum exact: there the float64 sums,
rounded to fp32 where the offsets are large, are the kernels' bits, ties included.
The Triton kernels run in the interpreter (tests/conftest.py sets TRITON_INTERPRET)."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any import of triton

import pytest  # noqa: E402
import torch  # noqa: E402

import coir_kernels  # noqa: E402
from coir_kernels import bank, gemm, reference, two_stage  # noqa: E402
from coir_kernels import triton_ops as tk  # noqa: E402
from coir_kernels.triton_ops import tiles  # noqa: E402

CLEAR = 1e-4
INTERPRETED = tk.INTERPRETED and tk.INTERPRETED == tk.LIBRARY_INTERPRETED
needs_interpreter = pytest.mark.skipif(not INTERPRETED, reason="needs the Triton interpreter in this process")
TRITON = pytest.param("triton", marks=needs_interpreter)
# two-stage: on the bf16 band throughout, or switched to fp32 (its narrow band) at once
COUNTING = ["reference", "two-stage", "two-stage/fp32", TRITON]
RANKING = ["reference", TRITON]
SMALL_BLOCKS = dict(BLOCK_Q=16, BLOCK_G=32, BLOCK_D=16, num_warps=4, programs=8)


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    """Several gallery tiles per problem, so each tile's offsets are its own columns';
    Triton: several programs, gallery splits, pass 1 in several programs."""
    monkeypatch.setattr(reference, "GALLERY_TILE", 64)
    monkeypatch.setattr(reference, "QUERY_TILE", 16)
    monkeypatch.setattr(two_stage, "GALLERY_TILE", 64)
    monkeypatch.setattr(two_stage, "QUERY_TILE", 16)
    monkeypatch.setattr(tiles, "block_config", lambda *args, **kwargs: dict(SMALL_BLOCKS))


def counts_by(impl, q, g, positives, exclude, offset, monkeypatch):
    if impl.startswith("two-stage"):
        monkeypatch.setattr(two_stage, "DENSE_BAND", -1.0 if impl.endswith("fp32") else float("inf"))
    got = coir_kernels.target_rank_counts(q, g, positives, exclude, impl=impl.split("/")[0], offset=offset)
    assert coir_kernels.used()["target_rank_counts"] == impl.split("/")[0]
    return got


def topk_by(impl, q, g, k, exclude, offset):
    got = coir_kernels.topk_excluding(q, g, k, exclude, impl=impl, offset=offset)
    assert coir_kernels.used()["topk_excluding"] == impl
    return got


# ---- The float64 oracle -------------------------------------------------------
def scores64(q: torch.Tensor, g: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """(Q, G) float64: s(q, g) (dot, or max over token pairs) + offset[g]."""
    q, g = q.double(), g.double()
    if q.ndim == 2 and g.ndim == 2:
        return q @ g.T + offset.double()
    q = q if q.ndim == 3 else q[:, None]
    g = g if g.ndim == 3 else g[:, None]
    return torch.einsum("qsd,gtd->qgst", q, g).amax(dim=(-1, -2)) + offset.double()


def ranked(scores: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
    """scores with each query's excluded item at -inf."""
    scores = scores.clone()
    rows = torch.nonzero(exclude >= 0).squeeze(1)
    scores[rows, exclude[rows]] = float("-inf")
    return scores


def expected_counts(scores, positives, exclude):
    """(greater, equal, positive scores) by plain comparison of float64 scores."""
    valid = ranked(scores, exclude) > float("-inf")
    rows = torch.arange(scores.shape[0])
    greater, equal = torch.zeros_like(positives), torch.zeros_like(positives)
    own = scores.gather(1, positives.clamp(min=0))
    for p in range(positives.shape[1]):
        others = valid.clone()
        others[rows, positives[:, p].clamp(min=0)] = False
        greater[:, p] = ((scores > own[:, p, None]) & others).sum(1)
        equal[:, p] = ((scores == own[:, p, None]) & others).sum(1)
    pad = positives < 0
    return greater.masked_fill(pad, 0), equal.masked_fill(pad, 0), own.masked_fill(pad, float("nan"))


def assert_counts(got, scores, positives, exclude):
    greater, equal, own = expected_counts(scores, positives, exclude)
    assert got[0].dtype == got[1].dtype == torch.int64 and got[2].dtype == torch.float32
    assert torch.equal(got[0].cpu(), greater), (got[0] - greater).nonzero()[:5].tolist()
    assert torch.equal(got[1].cpu(), equal), (got[1] - equal).nonzero()[:5].tolist()
    pad = positives < 0
    assert torch.isnan(got[2][pad]).all()
    torch.testing.assert_close(got[2][~pad].double(), own[~pad], atol=1e-5, rtol=1e-6)


def assert_topk(got, scores, k, exclude):
    """Indices exactly the stable float64 order (ties: lower index first), scores close."""
    k = min(k, scores.shape[1] - (1 if bool((exclude >= 0).any()) else 0))
    values, indices = torch.sort(ranked(scores, exclude), dim=1, descending=True, stable=True)
    assert torch.equal(got[1].cpu(), indices[:, :k])
    torch.testing.assert_close(got[0].double(), values[:, :k], atol=1e-5, rtol=1e-6)


# ---- Random problems, clear of near-ties --------------------------------------
def crowded(scores, positives, exclude, k) -> torch.Tensor:
    """(G,) bool: items within CLEAR of a positive they are not, or of a neighbour in
    some query's top k + 1 (exact float64 ties excepted: copies with equal offsets)."""
    bad = torch.zeros(scores.shape[1], dtype=torch.bool)
    rows = torch.arange(scores.shape[0])
    for p in range(positives.shape[1]):
        live = positives[:, p] >= 0
        own = scores[rows, positives[:, p].clamp(min=0)]
        near = ((scores - own[:, None]).abs() < CLEAR) & (scores != own[:, None])  # not itself, nor copies
        bad |= (near & live[:, None]).any(0)
    values, order = torch.sort(ranked(scores, exclude), dim=1, descending=True)
    gaps = values[:, : k + 1].diff(dim=1).abs()
    close = (gaps < CLEAR) & (gaps > 0)
    bad[order[:, :k][close]], bad[order[:, 1 : k + 1][close]] = True, True
    return bad


def unit(shape, gen):
    return torch.nn.functional.normalize(torch.randn(shape, generator=gen), dim=-1)


def random_problem(num_queries, num_gallery, dim, tokens=(0, 0), k=10, seed=0):
    """Unit vectors (tokens: S, T per query / item, 0 for single vectors), offsets of
    about the scores' own spread, two positives (some padding), some excluded items."""
    gen = torch.Generator().manual_seed(seed)
    q = unit((num_queries, tokens[0], dim) if tokens[0] else (num_queries, dim), gen)
    g = unit((num_gallery, tokens[1], dim) if tokens[1] else (num_gallery, dim), gen)
    offset = 0.3 * torch.randn(num_gallery, generator=gen)
    positives = torch.randint(0, num_gallery, (num_queries, 2), generator=gen)
    positives[1::3, 1] = -1
    exclude = torch.randint(0, num_gallery, (num_queries,), generator=gen)
    exclude[::4], exclude[(exclude[:, None] == positives).any(1)] = -1, -1
    for _ in range(200):
        bad = crowded(scores64(q, g, offset), positives, exclude, k)
        if not bad.any():
            return q, g, positives, exclude, offset
        offset[bad] = 0.3 * torch.randn(int(bad.sum()), generator=gen)
    raise AssertionError("could not clear the problem of near-ties")


SHAPES = {"single": (20, 250, 32, (0, 0)), "maxsim": (6, 40, 16, (4, 4))}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("impl", COUNTING)
def test_random_rank_counts_match_float64(impl, shape, monkeypatch):
    *sizes, tokens = SHAPES[shape]
    q, g, positives, exclude, offset = random_problem(*sizes, tokens=tokens, seed=1)
    got = counts_by(impl, q, g, positives, exclude, offset, monkeypatch)
    assert_counts(got, scores64(q, g, offset), positives, exclude)
    assert not torch.equal(counts_by(impl, q, g, positives, exclude, None, monkeypatch)[0], got[0])  # used


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("impl", RANKING)
def test_random_topk_matches_float64(impl, shape):
    *sizes, tokens = SHAPES[shape]
    q, g, _, exclude, offset = random_problem(*sizes, tokens=tokens, k=12, seed=2)
    for k in (1, 12):
        assert_topk(topk_by(impl, q, g, k, exclude, offset), scores64(q, g, offset), k, exclude)


# ---- Two-stage's band: offsets that put items at its edges --------------------
def band_edge_problem(seed, num_queries=8, num_gallery=480, dim=64, per_query=40):
    """Each query's positive, and per_query items of its own whose offset scores lie
    at own' +- E (0.5 ... 1.5) (E the bf16 band's half-width): half of them with a
    plain score far from the positive's, half with the positive's plain score (up to
    rounding) that only the offset separates. Seeds are tried until no other pair
    comes within CLEAR of a positive."""
    for attempt in range(seed, seed + 50):
        gen = torch.Generator().manual_seed(attempt)
        q, g = unit((num_queries, dim), gen), unit((num_gallery, dim), gen)
        offset = 0.3 * torch.randn(num_gallery, generator=gen)
        positives = torch.arange(num_queries)[:, None] * per_query
        edge = two_stage.margins(q, g, torch.bfloat16)
        for i in range(num_queries):
            pos = int(positives[i, 0])
            items = torch.arange(pos + 1, pos + per_query)
            plain = float(q[i] @ g[pos])
            twins = items[: len(items) // 2]  # the positive's plain score, another direction
            orth = torch.randn(len(twins), dim, generator=gen)
            orth = torch.nn.functional.normalize(orth - (orth @ q[i])[:, None] * q[i], dim=-1)
            g[twins] = plain * q[i] + (1 - plain**2) ** 0.5 * orth
            shift = edge[i] * (0.5 + torch.rand(len(items), generator=gen)) * (torch.randint(
                0, 2, (len(items),), generator=gen) * 2 - 1)  # +- (0.5 ... 1.5) E
            own = plain + float(offset[pos])
            offset[items] = (own + shift.double() - (g[items].double() @ q[i].double())).float()
        exclude = torch.full((num_queries,), -1)
        if not crowded(scores64(q, g, offset), positives, exclude, 0).any():
            return q, g, positives, exclude, offset
    raise AssertionError("no seed gave a clear band-edge problem")


@pytest.mark.parametrize("impl", COUNTING)
def test_counts_at_the_band_edges_match_float64(impl, monkeypatch):
    q, g, positives, exclude, offset = band_edge_problem(seed=0)
    scores, plain = scores64(q, g, offset), scores64(q, g, torch.zeros_like(offset))
    own = scores.gather(1, positives)
    low = two_stage.low_precision_scores(q.bfloat16(), g.bfloat16()).float() + offset
    margin = two_stage.margins(q, g, torch.bfloat16, offset)[:, None]
    inside = (low - own).abs() <= margin
    assert inside.sum() > 100 and ((low - own).abs() <= 2 * margin).logical_and(~inside).sum() > 50
    # the items that matter: plain scores far from the positive's, or tied with it
    far = (plain - plain.gather(1, positives)).abs() > 3 * margin
    assert (inside & far).sum() > 50 and (inside & ~far).sum() > 50
    assert_counts(counts_by(impl, q, g, positives, exclude, offset, monkeypatch), scores, positives, exclude)


# ---- Exact problems: ties made and broken by the offsets ----------------------
def integer_problem(seed=0, num_queries=16, num_gallery=150, dim=8):
    """Integer vectors and offsets: every score and sum exact, ties everywhere."""
    gen = torch.Generator().manual_seed(seed)
    q, g = (torch.randint(-2, 3, (n, dim), generator=gen).float() for n in (num_queries, num_gallery))
    offset = torch.randint(-3, 4, (num_gallery,), generator=gen).float()
    positives = torch.randint(0, num_gallery, (num_queries, 3), generator=gen)
    positives[::4, 2] = -1
    exclude = torch.randint(0, num_gallery, (num_queries,), generator=gen).index_fill(0, torch.arange(0, num_queries, 3), -1)
    exclude[(positives == exclude[:, None]).any(1)] = -1
    return q, g, positives, exclude, offset


@pytest.mark.parametrize("impl", COUNTING)
def test_offsets_make_and_break_exact_ties(impl, monkeypatch):
    q, g, positives, exclude, offset = integer_problem()
    scores, plain = scores64(q, g, offset), scores64(q, g, torch.zeros_like(offset))
    own, own_plain = scores.gather(1, positives.clamp(min=0)), plain.gather(1, positives.clamp(min=0))
    made = (scores[:, None, :] == own[:, :, None]) & (plain[:, None, :] != own_plain[:, :, None])
    broken = (scores[:, None, :] != own[:, :, None]) & (plain[:, None, :] == own_plain[:, :, None])
    assert made.sum() > 100 and broken.sum() > 100  # ties the offsets make, and ties they break
    assert_counts(counts_by(impl, q, g, positives, exclude, offset, monkeypatch), scores, positives, exclude)


@pytest.mark.parametrize("impl", RANKING)
def test_topk_breaks_offset_ties_by_gallery_order(impl):
    q, g, _, exclude, offset = integer_problem(seed=1)
    scores = scores64(q, g, offset)
    for k in (5, 40):
        got = topk_by(impl, q, g, k, exclude, offset)
        assert_topk(got, scores, k, exclude)
        assert (got[0].diff(dim=1) == 0).any()  # ties inside the lists, in gallery order


def large_offset_problem(num_queries=24, num_gallery=400, dim=16, seed=0):
    """Dyadic vectors (exact in bf16, fp32 scores exact), offsets near 2^22 where fp32 keeps
    steps of 1/2: more than bf16 scoring errs (E < 0.2). Query 0 = (1, 1, 0, ...) and 20
    built items tie after the addition: its positive and 3 more at 10.5, 8 at 10.734375
    (bf16: 10.75, + 2^22: 11 + 2^22), 8 at 10.265625 (bf16: 10.25, + 2^22: 10 + 2^22)."""
    gen = torch.Generator().manual_seed(seed)
    q, g = (torch.randint(-8, 9, (n, dim), generator=gen).float() / 16 for n in (num_queries, num_gallery))
    offset = 2.0**22 + torch.randint(-2, 3, (num_gallery,), generator=gen).float() / 2
    built = torch.arange(20) * 20 + 1
    q[0], g[built] = 0.0, 0.0
    q[0, :2] = 1.0
    g[built, :2] = torch.tensor([[10.0, 0.5], [10.25, 0.25], [10.5, 15 / 64], [10.0, 17 / 64]]
                                ).repeat_interleave(torch.tensor([1, 3, 8, 8]), 0)
    offset[built] = 2.0**22
    positives = torch.randint(0, num_gallery, (num_queries, 2), generator=gen)
    positives[0, 0] = built[0]
    return q, g, positives, torch.full((num_queries,), -1), offset


@pytest.mark.parametrize("impl", COUNTING)
def test_the_band_covers_the_rounding_of_large_offsets(impl, monkeypatch):
    q, g, positives, exclude, offset = large_offset_problem()
    exact = (scores64(q, g, offset).float()).double()  # fl32(s + o): s and o exact, one rounding
    if impl == "two-stage":  # the bound itself: bf16 then offset vs fp32 then offset
        low = two_stage.low_precision_scores(q.bfloat16(), g.bfloat16()).float() + offset
        unwidened = two_stage.margins(q, g, torch.bfloat16)[:, None]
        assert ((low - exact).abs() <= two_stage.margins(q, g, torch.bfloat16, offset)[:, None]).all()
        assert ((low - exact).abs() > unwidened).any()  # what the widening is for
    got = counts_by(impl, q, g, positives, exclude, offset, monkeypatch)
    assert_counts(got, exact, positives, exclude)
    assert got[1][0, 0] == 19  # the built items all tie with query 0's positive


# ---- Copies: one score per group of identical rows, then each member's own offset ----
DESIGNED = torch.tensor([7, 30, 90, 150, 200, 11, 60, 130])


def copies_problem(toward_seven=False):
    """Row 7 (every query's first positive) copied at 30, 90, 150 and 200 with offsets
    equal (30), equal but -0.0 against +0.0 (90), higher (150) and lower (200); rows
    11, 60, 130 (every query's third positive) identical with offsets 0.0, 0.02, 0.0.
    toward_seven: queries near row 7, small offsets elsewhere: its copies lead the top-K."""
    scale = 0.05 if toward_seven else 0.3
    for seed in range(50):
        gen = torch.Generator().manual_seed(seed)
        q, g = unit((16, 24), gen), unit((220, 24), gen)
        g[[30, 90, 150, 200]], g[[60, 130]] = g[7].clone(), g[11].clone()
        q = torch.nn.functional.normalize(q + 3.0 * g[7], dim=-1) if toward_seven else q
        offset = scale * torch.randn(220, generator=gen)
        offset[DESIGNED] = torch.tensor([0.0, 0.0, -0.0, 0.05, -0.05, 0.0, 0.02, 0.0])
        positives = torch.stack([torch.full((16,), 7), torch.randint(0, 220, (16,), generator=gen),
                                 torch.full((16,), 130)], 1)
        positives[torch.isin(positives[:, 1], DESIGNED), 1] = -1
        exclude = torch.randint(0, 220, (16,), generator=gen).index_fill(0, torch.arange(0, 16, 4), -1)
        exclude[torch.isin(exclude, DESIGNED) | (exclude == positives[:, 1])] = -1
        for _ in range(100):  # redraw the other items' offsets; a crowded copy: the next seed
            bad = crowded(scores64(q, g, offset), positives, exclude, 5 if toward_seven else 0)
            free = bad.clone()
            free[DESIGNED] = False
            if not free.any():
                break
            offset[free] = scale * torch.randn(int(free.sum()), generator=gen)
        if not bad.any():
            return q, g, positives, exclude, offset
    raise AssertionError("could not clear the copies problem")


@pytest.mark.parametrize("impl", COUNTING)
def test_copies_with_equal_offsets_tie_and_others_are_ordered_by_them(impl, monkeypatch):
    q, g, positives, exclude, offset = copies_problem()
    scores, got = scores64(q, g, offset), counts_by(impl, q, g, positives, exclude, offset, monkeypatch)
    assert_counts(got, scores, positives, exclude)
    assert (got[1][:, 0] == 2).all()  # rows 30 and 90 tie with row 7; 150 above, 200 below
    assert (scores[:, 150] > scores[:, 7]).all() and (scores[:, 200] < scores[:, 7]).all()
    assert (got[1][:, 2] == 1).all()  # 130 ties with 11 (equal offsets), not with 60


@pytest.mark.parametrize("impl", RANKING)
def test_copies_in_the_top_k_follow_their_offsets_then_gallery_order(impl):
    q, g, _, exclude, offset = copies_problem(toward_seven=True)
    got = topk_by(impl, q, g, 5, exclude, offset)
    assert_topk(got, scores64(q, g, offset), 5, exclude)
    assert (got[1][:, :4] == torch.tensor([150, 7, 30, 90])).all()


# ---- Bank statistics ----------------------------------------------------------
@pytest.mark.parametrize("chunk", [None, 64])
def test_bank_statistics_match_a_float64_direct_computation(chunk, monkeypatch):
    gen = torch.Generator().manual_seed(4)
    b, g = unit((1003, 24), gen), unit((77, 24), gen)  # 1003 = 15 x 64 + 43
    rows, real = [], gemm.scores
    monkeypatch.setattr(gemm, "scores", lambda x, y, *a: rows.append(x.shape[0]) or real(x, y, *a))
    s = b.double() @ g.double().T
    for beta, k in ((20.0, 10), (1.0, 1), (-3.0, 1003)):
        rows.clear()
        lse, mean = (coir_kernels.bank_statistics(b, g, beta, k) if chunk is None
                     else bank.bank_statistics(b, g, beta, k, chunk=chunk))
        assert lse.dtype == mean.dtype == torch.float64 and lse.shape == mean.shape == (77,)
        torch.testing.assert_close(lse, torch.logsumexp(beta * s, dim=0), atol=2e-5, rtol=1e-7)
        torch.testing.assert_close(mean, s.sort(dim=0, descending=True).values[:k].mean(0), atol=1e-6, rtol=0)
        assert sum(rows) == 1003 and max(rows) <= (chunk or bank.CHUNK_ELEMENTS // 77)
    if chunk:
        assert len(rows) == 16  # one pass, chunk by chunk


def test_bank_statistics_reject_bad_inputs():
    b, g = torch.randn(10, 8), torch.randn(5, 8)
    for args, error in (((b, g, 1.0, 11), ValueError), ((b, g, 1.0, 0), ValueError),
                        ((b, torch.randn(5, 4), 1.0, 2), ValueError), ((b[None], g, 1.0, 2), ValueError),
                        ((b, g, float("inf"), 2), ValueError), ((b.long(), g, 1.0, 2), TypeError)):
        with pytest.raises(error):
            coir_kernels.bank_statistics(*args)


# ---- Checks, and the default --------------------------------------------------
@needs_interpreter
def test_the_self_check_of_the_offset_kernels_passes_in_the_interpreter():
    from coir_kernels import self_check

    for op in ("target_rank_counts", "topk_excluding"):
        assert self_check._agrees(op + self_check.WITH_OFFSET, torch.device("cpu"))


def test_bad_offsets_are_rejected_with_clear_errors():
    q, g, positives, exclude, _ = integer_problem()
    good = torch.zeros(g.shape[0])
    bad = ((good[:-1], ValueError, "1-D"), (good[None], ValueError, "1-D"), (good.double(), TypeError, "float32"),
           ([0.0] * g.shape[0], TypeError, "Tensor"), (good.to("meta"), ValueError, "device"),
           (good + float("nan"), ValueError, "finite"), (good.index_fill(0, torch.tensor([3]), float("inf")),
                                                          ValueError, "finite"))
    for offset, error, words in bad:
        with pytest.raises(error, match=words):
            coir_kernels.target_rank_counts(q, g, positives, exclude, offset=offset)
        with pytest.raises(error, match=words):
            coir_kernels.topk_excluding(q, g, 3, exclude, offset=offset)


@pytest.mark.parametrize("impl", ["reference", "two-stage", TRITON])
def test_zero_offsets_give_the_results_without_offsets(impl, monkeypatch):
    q, g, positives, exclude, _ = random_problem(12, 90, 16, seed=5)
    zero = torch.zeros(g.shape[0])
    without, with_zero = (counts_by(impl, q, g, positives, exclude, o, monkeypatch) for o in (None, zero))
    assert all(torch.equal(a, b) for a, b in zip(without[:2], with_zero[:2]))
    assert torch.equal(without[2].nan_to_num(7.0), with_zero[2].nan_to_num(7.0))
    if impl != "two-stage":
        top, top_zero = topk_by(impl, q, g, 9, exclude, None), topk_by(impl, q, g, 9, exclude, zero)
        assert torch.equal(top[1], top_zero[1]) and torch.equal(top[0], top_zero[0])
