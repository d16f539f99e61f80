"""The two-stage exact rank path (coir_kernels/two_stage.py): its error bound holds, and
its counts are the fp32 reference's on random problems, on problems built to put
many items at the edge of the band, with copies, for max-sim and for the mixed sweep."""

from __future__ import annotations

import pytest
import torch

import coir_kernels
from coir_kernels import reference, two_stage
from tests.coir_kernels.problems import assert_counts_equal, make_problem

FORMATS = [torch.bfloat16, torch.float16]


@pytest.fixture(autouse=True)
def band_never_dense(request, monkeypatch):
    """These problems crowd the band on purpose: keep them on the low-precision path
    (the switch to fp32 on a dense band has its own test)."""
    if "dense" not in request.node.name:
        monkeypatch.setattr(two_stage, "DENSE_BAND", float("inf"))
        monkeypatch.setattr(two_stage, "DENSE_BAND_MIXED", float("inf"))


@pytest.mark.parametrize("dtype", FORMATS)
@pytest.mark.parametrize("dim", [16, 256, 1024])
def test_error_bound_holds_for_wide_and_spiky_vectors(dtype, dim):
    gen = torch.Generator().manual_seed(dim)
    q = torch.randn(64, dim, generator=gen)
    g = torch.randn(512, dim, generator=gen)
    q[:8] = 0.0
    q[:8, :4] = 1.0  # mass on a few components: the worst case of the rounding terms
    g[:32] = q[0] * (1 + 1e-3 * torch.randn(32, dim, generator=gen))
    exact = q @ g.T
    low = two_stage.low_precision_scores(q.to(dtype), g.to(dtype)).float()
    bound = two_stage.kappa(dim, dtype) * q.norm(dim=1)[:, None] * g.norm(dim=1)[None, :]
    assert ((low - exact).abs() <= bound).all()
    assert ((low - exact).abs() > bound / 64).any()  # the bound is not vacuous


def band_edge_problem(dim: int = 64, gallery: int = 3000, seed: int = 0, dtype=torch.bfloat16):
    """Unit queries whose positive scores s; a third of the gallery placed at
    s +- E * (0.5 ... 1.5) by construction, so many items straddle the band's edges
    (and none within 1e-4 of s, where fp32 itself is ambiguous)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(20, dim, generator=gen), dim=-1)
    g = torch.nn.functional.normalize(torch.randn(gallery, dim, generator=gen), dim=-1)
    positives = torch.randint(0, gallery, (20, 1), generator=gen)
    edge = float(two_stage.kappa(dim, dtype))
    for i in range(20):
        own = float(q[i] @ g[positives[i, 0]])
        rows = torch.arange(i * 50, i * 50 + 50) % gallery
        rows = rows[rows != positives[i, 0]]
        offsets = edge * (0.5 + torch.rand(len(rows), generator=gen)) * torch.where(
            torch.rand(len(rows), generator=gen) < 0.5, -1.0, 1.0)
        target = (own + offsets).clamp(-0.99, 0.99)
        orth = torch.randn(len(rows), dim, generator=gen)
        orth -= (orth @ q[i])[:, None] * q[i]
        orth = torch.nn.functional.normalize(orth, dim=-1)
        g[rows] = target[:, None] * q[i] + (1 - target[:, None] ** 2).sqrt() * orth
    exclude = torch.full((20,), -1)
    return q, g, positives, exclude


@pytest.mark.parametrize("dtype", FORMATS)
def test_counts_equal_the_reference_at_the_band_edges(dtype):
    q, g, positives, exclude = band_edge_problem(dtype=dtype)
    low = two_stage.low_precision_scores(q.to(dtype), g.to(dtype)).float()
    own = reference.rowwise_similarity(q, g[positives[:, 0]])
    margin = two_stage.margins(q, g, dtype)
    inside = ((low - own[:, None]).abs() <= margin[:, None]).sum()
    assert inside > 200  # the problem does what it says: many items are rescored
    expected = reference.target_rank_counts(q, g, positives, exclude)
    assert_counts_equal(two_stage.target_rank_counts(q, g, positives, exclude, dtype), expected, torch.float32)


def test_a_band_that_takes_in_a_whole_tile_is_rescored_in_bounded_calls(monkeypatch):
    """Rescoring holds at most EXACT_CALL_BYTES per float64 call, however many pairs a band
    takes in (the identity gallery of a score matrix can put every pair of a tile there)."""
    q, g, positives, exclude = band_edge_problem(dtype=torch.bfloat16)
    expected = reference.target_rank_counts(q, g, positives, exclude)
    pair_bytes = 8 * (2 * q.shape[1] + 1)  # the operands of both sides and their product
    monkeypatch.setattr(two_stage, "EXACT_CALL_BYTES", 5 * pair_bytes)
    calls = []
    rowwise = reference.rowwise_similarity
    monkeypatch.setattr(reference, "rowwise_similarity", lambda a, b: calls.append(len(a)) or rowwise(a, b))
    got = two_stage.target_rank_counts(q, g, positives, exclude, torch.bfloat16)
    assert_counts_equal(got, expected, torch.float32)
    # the positives' own scores take one call per query tile (20 rows); every band call takes 5 at most
    assert max(calls) <= len(q) and sum(n for n in calls if n <= 5) > 200


def test_the_mixed_sweep_rescores_in_bounded_calls(monkeypatch):
    """The mixed sweep's unsettled items are rescored EXACT_CALL_BYTES at a time too."""
    from benches.scoring_job import simplex

    gen = torch.Generator().manual_seed(2)
    g = torch.nn.functional.normalize(torch.randn(800, 32, generator=gen), dim=-1)
    target = torch.randint(0, 800, (40,), generator=gen)
    parts = tuple(torch.nn.functional.normalize(g[target] + s * torch.randn(40, 32, generator=gen), dim=-1)
                  for s in (0.3, 1.0, 0.2))
    positives, exclude, weights = target[:, None], torch.full((40,), -1), simplex(6)
    expected = reference.mixed_rank_counts(parts, g, weights, positives, exclude)
    monkeypatch.setattr(two_stage, "EXACT_CALL_BYTES", 3 * 8 * (2 * g.shape[1] + 1))
    calls = []
    rowwise = reference.rowwise_similarity
    monkeypatch.setattr(reference, "rowwise_similarity", lambda a, b: calls.append(len(a)) or rowwise(a, b))
    got = two_stage.mixed_rank_counts(parts, g, weights, positives, exclude, rows_per_chunk=16)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    # the positives' own scores take one call per chunk (16 rows); the rescoring calls 3 pairs at most
    assert max(calls) <= 16 and sum(n for n in calls if n <= 3) > 100


@pytest.mark.parametrize("tiles", [(None, None), (7, 64), (64, 33)])
@pytest.mark.parametrize("kind", ["random", "integer", "equal", "reference_best"])
def test_counts_equal_the_reference_for_every_kind_and_tile(kind, tiles):
    q, g, positives, exclude = make_problem(37, 300, 24, num_pos=3, kind=kind, seed=5)
    got = two_stage.target_rank_counts(q, g, positives, exclude, query_tile=tiles[0], gallery_tile=tiles[1])
    assert_counts_equal(got, reference.target_rank_counts(q, g, positives, exclude), torch.float32)


def test_copies_of_positives_and_of_band_items_tie_across_blocks():
    q, g, positives, exclude = band_edge_problem(gallery=600, seed=3)
    for i in range(0, 20, 2):
        g[(positives[i, 0] + 301) % 600] = g[positives[i, 0]]  # a copy of the positive, another block
    g[500:510] = g[0]
    expected = reference.target_rank_counts(q, g, positives, exclude)
    got = two_stage.target_rank_counts(q, g, positives, exclude, gallery_tile=128)
    assert_counts_equal(got, expected, torch.float32)
    assert (got[1][::2] >= 1).all()  # each copied positive ties with its copy


@pytest.mark.parametrize("query_tokens", [0, 4])
def test_maxsim_counts_equal_the_reference(query_tokens):
    gen = torch.Generator().manual_seed(1)
    g = torch.nn.functional.normalize(torch.randn(200, 8, 32, generator=gen), dim=-1)
    shape = (30, query_tokens, 32) if query_tokens else (30, 32)
    q = torch.nn.functional.normalize(torch.randn(shape, generator=gen), dim=-1)
    positives = torch.randint(0, 200, (30, 2), generator=gen)
    exclude = torch.randint(0, 200, (30,), generator=gen)
    exclude[positives[:, 0] == exclude] = -1
    exclude[positives[:, 1] == exclude] = -1
    g[150] = g[3]
    expected = reference.target_rank_counts(q, g, positives, exclude)
    assert_counts_equal(two_stage.target_rank_counts(q, g, positives, exclude, gallery_tile=50), expected,
                        torch.float32)


@pytest.mark.parametrize("dtype", FORMATS)
def test_mixed_sweep_counts_equal_the_reference(dtype):
    from benches.scoring_job import simplex

    gen = torch.Generator().manual_seed(2)
    g = torch.nn.functional.normalize(torch.randn(800, 32, generator=gen), dim=-1)
    target = torch.randint(0, 800, (40,), generator=gen)
    parts = tuple(torch.nn.functional.normalize(g[target] + s * torch.randn(40, 32, generator=gen), dim=-1)
                  for s in (0.3, 1.0, 0.2))
    g[700] = g[target[0]]  # a copy of a positive
    positives = torch.stack([target, torch.randint(0, 800, (40,), generator=gen)], 1)
    positives[::2, 1] = -1
    exclude = (target + 1) % 800
    weights = simplex(6)
    expected = reference.mixed_rank_counts(parts, g, weights, positives, exclude)
    got = two_stage.mixed_rank_counts(parts, g, weights, positives, exclude, dtype, rows_per_chunk=16)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    pad = torch.isnan(expected[2])
    torch.testing.assert_close(got[2][~pad], expected[2][~pad], atol=1e-5, rtol=1e-5)
    negative = torch.tensor([[1.0, -0.5, 0.5]])  # settles nothing: the fp32 reference
    assert torch.equal(two_stage.mixed_rank_counts(parts, g, negative, positives, exclude)[0],
                       reference.mixed_rank_counts(parts, g, negative, positives, exclude)[0])


def clustered(queries: int, gallery: int, dim: int, seed: int):
    """Unit vectors crowded around one direction: most scores within a bf16 band of each other."""
    gen = torch.Generator().manual_seed(seed)
    centre = torch.randn(dim, generator=gen)
    g = torch.nn.functional.normalize(centre + 0.02 * torch.randn(gallery, dim, generator=gen), dim=-1)
    target = torch.randint(0, gallery, (queries,), generator=gen)
    q = torch.nn.functional.normalize(g[target] + 0.01 * torch.randn(queries, dim, generator=gen), dim=-1)
    return q, g, target


def test_a_dense_band_goes_on_in_fp32_with_the_same_counts(monkeypatch):
    """Crowded scores hold fp32 near-ties (within 2 gamma, where the reference's GEMM and
    a rescoring may order them differently), so the paths are compared with each other:
    bf16 with its wide band, and fp32 with its narrow one, decide by the same rescoring."""
    q, g, target = clustered(600, 900, 64, seed=4)
    positives, exclude = target[:, None], (target + 1) % 900
    rescored = []
    real_exact = two_stage._Chunk._exact
    monkeypatch.setattr(two_stage._Chunk, "_exact", lambda self, row, item: rescored.append(len(row)) or
                        real_exact(self, row, item))
    got = two_stage.target_rank_counts(q, g, positives, exclude, query_tile=256, gallery_tile=300)
    switched = sum(rescored)
    assert_counts_equal(got, two_stage.target_rank_counts(q, g, positives, exclude, torch.float32), torch.float32)
    monkeypatch.setattr(two_stage, "DENSE_BAND", float("inf"))
    rescored.clear()
    assert_counts_equal(two_stage.target_rank_counts(q, g, positives, exclude, query_tile=256, gallery_tile=300),
                        got, torch.float32)
    assert sum(rescored) > max(0.01 * 600 * 900, 5 * switched)  # the probe saw it: fp32's narrow band


def test_a_dense_band_hands_the_mixed_sweep_to_the_reference(monkeypatch):
    """Queries 0-63 near items of a spread half of the gallery (a sparse band), the rest
    near a crowded half: the first chunk on the band path, the rest by the reference."""
    from benches.scoring_job import simplex

    gen = torch.Generator().manual_seed(6)
    crowded, g_crowded, target = clustered(236, 250, 32, seed=6)
    g_spread = torch.nn.functional.normalize(torch.randn(250, 32, generator=gen), dim=-1)
    near = torch.randint(0, 250, (64,), generator=gen)
    sparse = torch.nn.functional.normalize(g_spread[near] + 0.3 * torch.randn(64, 32, generator=gen), dim=-1)
    g = torch.cat([g_crowded, g_spread])
    q = torch.cat([sparse, crowded])
    parts = (q, torch.nn.functional.normalize(q + 0.01, dim=-1), q)
    positives, exclude, weights = torch.cat([near + 250, target])[:, None], torch.full((300,), -1), simplex(4)
    calls = []
    real = reference.mixed_rank_counts
    monkeypatch.setattr(reference, "mixed_rank_counts", lambda *a, **k: calls.append(a[0][0].shape[0]) or real(*a, **k))
    got = two_stage.mixed_rank_counts(parts, g, weights, positives, exclude, rows_per_chunk=64)
    assert calls == [300 - 64]  # after the first chunk, the rest in one reference call
    monkeypatch.setattr(reference, "mixed_rank_counts", real)
    # crowded scores hold fp32 near-ties whose order depends on the GEMM's shape: each part
    # is compared with the same computation
    rest = real(tuple(p[64:] for p in parts), g, weights, positives[64:], exclude[64:])
    first = real(tuple(p[:64] for p in parts), g, weights, positives[:64], exclude[:64])
    for k in (0, 1):
        assert torch.equal(got[k][:, 64:], rest[k]) and torch.equal(got[k][:, :64], first[k])


def test_dispatch_takes_two_stage_on_a_bf16_cpu_and_says_so(monkeypatch):
    q, g, positives, exclude = make_problem(9, 50, 16, seed=4)
    expected = reference.target_rank_counts(q, g, positives, exclude)
    monkeypatch.delenv("COIR_KERNELS", raising=False)
    for fast, chosen in ((True, "two-stage"), (False, "reference")):
        monkeypatch.setattr(coir_kernels, "cpu_multiplies_bf16", lambda fast=fast: fast)
        assert_counts_equal(coir_kernels.target_rank_counts(q, g, positives, exclude), expected, torch.float32)
        assert coir_kernels.used()["target_rank_counts"] == chosen
    monkeypatch.setattr(coir_kernels, "cpu_multiplies_bf16", lambda: True)
    monkeypatch.setenv("COIR_KERNELS", "reference")  # fp32 only, on request
    coir_kernels.target_rank_counts(q, g, positives, exclude)
    assert coir_kernels.used()["target_rank_counts"] == "reference"
    coir_kernels.topk_excluding(q, g, 3, exclude, impl="two-stage")  # no two-stage top-K: the reference
    assert coir_kernels.used()["topk_excluding"] == "reference"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", FORMATS)
def test_on_cuda_counts_equal_the_reference(dtype):
    """cuBLAS with full-precision sums (reduced-precision reductions turned off)."""
    q, g, positives, exclude = band_edge_problem(dim=256, gallery=20000, dtype=dtype)
    expected = reference.target_rank_counts(q, g, positives, exclude)
    got = two_stage.target_rank_counts(q.cuda(), g.cuda(), positives.cuda(), exclude.cuda(), dtype)
    assert_counts_equal(tuple(x.cpu() for x in got), expected, torch.float32)


@pytest.mark.gpu
def test_self_check_passes_every_triton_operation_on_this_card():
    from coir_kernels import self_check

    device = torch.device("cuda")
    for op in ("target_rank_counts", "topk_excluding", "mixed_rank_counts"):
        assert self_check.passes(op, device), op


def test_self_check_falls_back_and_warns_once_on_a_disagreeing_kernel(monkeypatch):
    from coir_kernels import self_check

    monkeypatch.setattr(self_check, "_agrees", lambda op, device: False)
    monkeypatch.setattr(self_check, "_RESULTS", {})
    with pytest.warns(UserWarning, match="target_rank_counts disagrees with the reference"):
        assert not self_check.passes("target_rank_counts", torch.device("cpu"))
    assert not self_check.passes("target_rank_counts", torch.device("cpu"))  # no second warning
