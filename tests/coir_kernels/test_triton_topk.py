"""The fused top-K kernel (coir_kernels/triton_ops/topk.py) against the reference, ties to
the lower index, interpreted on CPU."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any import of triton

import pytest  # noqa: E402
import torch  # noqa: E402

from coir_kernels import reference  # noqa: E402
from coir_kernels import triton_ops as tk  # noqa: E402
from coir_kernels.triton_ops import topk  # noqa: E402
from tests.coir_kernels.problems import (  # noqa: E402
    SHAPES,
    SMALL_BLOCKS,
    assert_topk_equal,
    make_problem,
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("k", [1, 50])
@pytest.mark.parametrize("shape", SHAPES[:2], ids=lambda s: "x".join(map(str, s)))
def test_topk_matches_reference(shape, k, dtype):
    q, g, _, exclude = make_problem(*shape, dtype=dtype, seed=sum(shape) + k)
    got = tk.topk_excluding(q, g, k, exclude)
    assert_topk_equal(got, reference.topk_excluding(q, g, k, exclude), dtype, q, g)


@pytest.mark.parametrize("k", [39, 40, 41, 64])  # K >= G - 1: capped at the candidates
@pytest.mark.parametrize("with_exclude", [True, False])
def test_topk_asks_for_the_whole_gallery(k, with_exclude):
    q, g, _, exclude = make_problem(9, 40, 12, kind="integer", seed=k)
    if not with_exclude:
        exclude = torch.full_like(exclude, -1)
    got = tk.topk_excluding(q, g, k, exclude)
    expected = reference.topk_excluding(q, g, k, exclude)
    assert got[1].shape == (9, min(k, 39 if with_exclude else 40))
    assert_topk_equal(got, expected, torch.float32, q, g)
    for row, excluded in zip(got[1].tolist(), exclude.tolist()):
        assert excluded not in row and len(set(row)) == len(row)


@pytest.mark.parametrize("kind", ["integer", "equal", "reference_best"])
@pytest.mark.parametrize("config", [None, SMALL_BLOCKS], ids=["auto-blocks", "small-blocks"])
@pytest.mark.parametrize("k", [1, 10, 50])
def test_topk_ties_take_the_lower_index(kind, config, k):
    q, g, _, exclude = make_problem(29, 150, 24, kind=kind, seed=4)
    got = tk.topk_excluding(q, g, k, exclude, config=config)
    assert_topk_equal(got, reference.topk_excluding(q, g, k, exclude), torch.float32, q, g)
    if kind == "equal":  # everything ties: the first k indices, the excluded one skipped
        for row, excluded in zip(got[1].tolist(), exclude.tolist()):
            assert row == [j for j in range(150) if j != excluded][:k]
    if kind == "reference_best":
        assert not (got[1] == exclude[:, None]).any()


def test_topk_edge_cases():
    q, g, _, exclude = make_problem(6, 40, 16, seed=8)
    values, indices = tk.topk_excluding(q[:0], g, 5, exclude[:0])
    assert values.shape == indices.shape == (0, 5)
    values, indices = tk.topk_excluding(q, g[:1], 5, exclude.clamp(max=0))  # G=1, excluded
    assert values.shape == indices.shape == (6, 0)
    g_view = torch.randn(40, 32)[:, ::2]  # strided, and mixed dtypes
    got = tk.topk_excluding(q.half(), g_view, 7, exclude)
    assert_topk_equal(got, reference.topk_excluding(q.half(), g_view, 7, exclude), torch.float32,
                      q.half(), g_view)
    with pytest.raises(ValueError, match="k <= 64"):
        tk.topk_excluding(q, torch.randn(100, 16), 65, torch.full_like(exclude, -1))


def test_keys_decode_to_scores_and_indices():
    scores = torch.tensor([[3.5, -0.0, 0.0, -2.25, 1e-30, -1e30, float("inf"), -float("inf")]])
    cols = torch.arange(scores.shape[1])
    canonical = torch.where(scores == 0, torch.zeros_like(scores), scores)
    bits = canonical.view(torch.int32)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).long()
    keys = (ordered << 32) | (topk._INDEX_BIAS - cols)
    values, indices = topk.decode_keys(keys)
    assert torch.equal(indices, cols[None])
    assert torch.equal(values, canonical)
    order = keys.argsort(dim=1, descending=True)  # by score, then lower index
    expected = sorted(range(8), key=lambda j: (-scores[0, j].item(), j))
    assert order[0].tolist() == expected
