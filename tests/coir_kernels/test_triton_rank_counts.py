"""The fused rank-count kernels (coir_kernels/triton_ops/rank_counts.py) against the reference,
interpreted on CPU."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any import of triton

import pytest  # noqa: E402
import torch  # noqa: E402

from coir_kernels import reference  # noqa: E402
from coir_kernels import triton_ops as tk  # noqa: E402
from tests.coir_kernels.problems import (  # noqa: E402
    SHAPES,
    SMALL_BLOCKS,
    assert_counts_equal,
    make_problem,
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_rank_counts_match_reference(shape, dtype):
    q, g, positives, exclude = make_problem(*shape, dtype=dtype, seed=sum(shape))
    got = tk.target_rank_counts(q, g, positives, exclude)
    assert_counts_equal(got, reference.target_rank_counts(q, g, positives, exclude), dtype)


@pytest.mark.parametrize("kind", ["integer", "equal", "reference_best"])
@pytest.mark.parametrize("config", [None, SMALL_BLOCKS], ids=["auto-blocks", "small-blocks"])
def test_rank_counts_with_ties_and_the_reference_best(kind, config):
    q, g, positives, exclude = make_problem(29, 150, 24, num_pos=4, kind=kind, seed=3)
    if kind != "reference_best":
        positives[:, 1] = positives[:, 0]  # the same positive twice
    got = tk.target_rank_counts(q, g, positives, exclude, config=config)
    expected = reference.target_rank_counts(q, g, positives, exclude)
    assert_counts_equal(got, expected, torch.float32)
    if kind == "equal":  # all tie: nothing greater, every other valid item equal
        valid = positives >= 0
        assert (got[0][valid] == 0).all()
        others = 150 - 1 - (exclude >= 0).long()[:, None].expand_as(positives)
        assert torch.equal(got[1][valid], others[valid])
    if kind == "reference_best":  # the excluded best match never counts
        assert torch.equal(got[0], reference.target_rank_counts(q, g, positives, exclude)[0])
        with_it = reference.target_rank_counts(q, g, positives, torch.full_like(exclude, -1))[0]
        assert (with_it[positives >= 0] == got[0][positives >= 0] + 1).all()


def test_rank_counts_of_duplicated_gallery_rows_tie_with_the_positive():
    """Copies of the positive in other gallery blocks must score bit for bit the
    same as the positive's score from pass 1: equal, never greater."""
    q, g, _, _ = make_problem(20, 200, 40, seed=5)
    positives = torch.randint(0, 200, (20, 1), generator=torch.Generator().manual_seed(6))
    copies = [7, 50, 131, 199]  # spread over several 32-wide gallery blocks
    g[copies] = g[3].clone()
    positives[:10, 0] = 3
    exclude = torch.full((20,), -1)
    for config in (None, SMALL_BLOCKS):
        greater, equal, _ = tk.target_rank_counts(q, g, positives, exclude, config=config)
        ref = reference.target_rank_counts(q, g, positives, exclude)
        assert torch.equal(greater, ref[0]) and torch.equal(equal, ref[1])
        assert (equal[:10, 0] == len(copies)).all()


def test_rank_counts_edge_cases():
    q, g, positives, exclude = make_problem(6, 40, 16, seed=7)
    # no positives, no queries
    greater, equal, scores = tk.target_rank_counts(q, g, positives[:, :0], exclude)
    assert greater.shape == equal.shape == scores.shape == (6, 0)
    greater, equal, scores = tk.target_rank_counts(q[:0], g, positives[:0], exclude[:0])
    assert greater.shape == (0, 2) and scores.shape == (0, 2)
    # all padding
    pad = torch.full_like(positives, -1)
    greater, equal, scores = tk.target_rank_counts(q, g, pad, exclude)
    assert (greater == 0).all() and (equal == 0).all() and torch.isnan(scores).all()
    # strided (non-contiguous) inputs, mixed dtypes (computed in fp32 as the reference)
    wide = torch.randn(40, 32)
    g_view = wide[:, ::2]
    got = tk.target_rank_counts(q.half(), g_view, positives, exclude)
    expected = reference.target_rank_counts(q.half(), g_view, positives, exclude)
    assert_counts_equal(got, expected, torch.float32)
    with pytest.raises(IndexError):
        tk.target_rank_counts(q, g, positives + 40, exclude)


def test_kernel_ranks_give_the_recall_of_an_argsort():
    q, g, positives, exclude = make_problem(64, 500, 32, num_pos=1, seed=9)
    positives = positives[:, :1]
    greater, equal, _ = tk.target_rank_counts(q, g, positives, exclude)
    assert (equal == 0).all()  # random data: no ties
    scores = q @ g.T
    scores[torch.arange(64)[exclude >= 0], exclude[exclude >= 0]] = float("-inf")
    order = scores.argsort(dim=1, descending=True)
    argsort_rank = (order == positives).float().argmax(dim=1)  # 0-based
    for k in (1, 5, 10, 50):
        kernel_recall = (greater[:, 0] < k).float().mean().item()
        argsort_recall = (argsort_rank < k).float().mean().item()
        assert kernel_recall == argsort_recall, k
    assert torch.equal(greater[:, 0], argsort_rank)
