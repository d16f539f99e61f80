"""The compiled kernels on a GPU (`TRITON_INTERPRET=0 python -m pytest -m gpu tests/kernels`):
against the reference on cuBLAS, where counts may move only by near-ties."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any import of triton

import pytest  # noqa: E402
import torch  # noqa: E402

from coir_kernels import reference  # noqa: E402
from coir_kernels import triton_ops as tk  # noqa: E402
from tests.coir_kernels.problems import (  # noqa: E402
    TOLERANCE,
    WEIGHTS,
    make_mixed_problem,
    make_problem,
    make_tokens,
    near_tie_slack,
)

GPU_CASES = [  # (Q, G, D, P, kind, dtype)
    (37, 301, 64, 3, "random", torch.float32),
    (5, 1000, 256, 1, "random", torch.float16),
    (1000, 20011, 256, 2, "random", torch.float16),
    (333, 5000, 256, 1, "random", torch.bfloat16),
    (129, 3001, 32, 4, "integer", torch.float16),
    (129, 3001, 32, 4, "equal", torch.float32),
    (200, 4000, 64, 1, "reference_best", torch.float16),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}-{c[4]}-{c[5]}")
def test_gpu_rank_counts(case):
    *shape, kind, dtype = case
    q, g, positives, exclude = make_problem(*shape, kind=kind, dtype=dtype, seed=12, device="cuda")
    greater, equal, scores = tk.target_rank_counts(q, g, positives, exclude)
    ref_greater, ref_equal, ref_scores = reference.target_rank_counts(q, g, positives, exclude)
    pad = torch.isnan(ref_scores)
    assert torch.equal(torch.isnan(scores), pad)
    torch.testing.assert_close(scores[~pad], ref_scores[~pad], **TOLERANCE[dtype])
    if kind == "random":  # cuBLAS sums in another order: counts move only by near-ties
        all_scores = reference.similarity(q, g)
        slack = near_tie_slack(all_scores, ref_scores.nan_to_num(), dtype).masked_fill(pad, 0)
        assert ((greater - ref_greater).abs() <= slack).all()
        assert ((greater + equal) - (ref_greater + ref_equal)).abs().le(slack).all()
        assert (greater != ref_greater).float().mean() < 1e-3
    else:  # exact scores: exact counts
        assert torch.equal(greater, ref_greater) and torch.equal(equal, ref_equal)


@pytest.mark.gpu
@pytest.mark.parametrize("k", [1, 50, 64])
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}-{c[4]}-{c[5]}")
def test_gpu_topk(case, k):
    *shape, kind, dtype = case
    q, g, _, exclude = make_problem(*shape, kind=kind, dtype=dtype, seed=13, device="cuda")
    values, indices = tk.topk_excluding(q, g, k, exclude)
    ref_values, ref_indices = reference.topk_excluding(q, g, k, exclude)
    torch.testing.assert_close(values, ref_values, **TOLERANCE[dtype])
    if kind == "random":  # allowed to differ only where the two scores nearly tie
        differ = indices != ref_indices
        tol = TOLERANCE[dtype]
        assert (values - ref_values)[differ].abs().le(tol["atol"] + tol["rtol"] * ref_values.abs()[differ]).all()
        assert differ.float().mean() < 1e-3
    else:
        assert torch.equal(indices, ref_indices)
    assert not (indices == exclude[:, None]).any()


@pytest.mark.gpu
def test_gpu_duplicates_tie_with_the_positive():
    """Pass 1 and pass 2 must produce the same bits on the GPU too."""
    q, g, _, _ = make_problem(300, 5000, 256, dtype=torch.float16, seed=14, device="cuda")
    g[torch.arange(100, 5000, 97)] = g[3].clone()
    positives = torch.full((300, 1), 3, device="cuda")
    _, equal, _ = tk.target_rank_counts(q, g, positives, torch.full((300,), -1, device="cuda"))
    assert (equal[:, 0] == len(range(100, 5000, 97))).all()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gpu_mixed_rank_counts(dtype):
    parts, g, positives, exclude = make_mixed_problem(1000, 20011, 256, num_pos=2, seed=13)
    parts = tuple(x.to("cuda", dtype) for x in parts)
    g, positives, exclude = g.to("cuda", dtype), positives.cuda(), exclude.cuda()
    weights = torch.cat([WEIGHTS, torch.rand(60, 3)]).cuda()
    got = tk.mixed_rank_counts(parts, g, weights, positives, exclude)
    expected = reference.mixed_rank_counts(parts, g, weights, positives, exclude)
    valid = (positives >= 0)[None].expand_as(got[0])
    moved = (got[0] - expected[0]).abs()[valid]  # cuBLAS sums in another order: near-ties only
    assert moved.max() <= 3 and (moved > 0).float().mean() < 0.01


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_maxsim_rank_counts_and_topk(dtype):
    q = make_tokens(300, 32, 256, seed=14).to("cuda", dtype)
    g = make_tokens(2001, 32, 256, seed=15).to("cuda", dtype)
    positives = torch.randint(0, 2001, (300, 1), device="cuda")
    exclude = (positives[:, 0] + 1) % 2001
    greater, _, scores = tk.target_rank_counts(q, g, positives, exclude)
    ref_greater, _, ref_scores = reference.target_rank_counts(q, g, positives, exclude)
    torch.testing.assert_close(scores, ref_scores, atol=2e-2, rtol=0)
    assert (greater - ref_greater).abs().max() <= 3
    values, _ = tk.topk_excluding(q, g, 50, exclude)
    ref_values, _ = reference.topk_excluding(q, g, 50, exclude)
    torch.testing.assert_close(values, ref_values, atol=2e-2, rtol=0)
