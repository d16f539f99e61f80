"""The fused mixed-sweep kernel (coir_kernels/triton_ops/mixed.py) against the reference and
against ranking each mixed query directly, interpreted on CPU."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any import of triton

import pytest  # noqa: E402
import torch  # noqa: E402

from coir_kernels import reference  # noqa: E402
from coir_kernels import triton_ops as tk  # noqa: E402
from tests.coir_kernels.problems import (  # noqa: E402
    SMALL_BLOCKS,
    WEIGHTS,
    assert_counts_equal,
    exact_unit_rows,
    make_mixed_problem,
)


@pytest.mark.parametrize("config", [None, SMALL_BLOCKS], ids=["auto-blocks", "small-blocks"])
@pytest.mark.parametrize("shape", [(37, 301, 64, 3), (1, 17, 8, 1), (20, 70, 16, 2)],
                         ids=lambda s: "x".join(map(str, s)))
def test_mixed_rank_counts_match_reference(shape, config):
    parts, g, positives, exclude = make_mixed_problem(*shape, seed=sum(shape))
    got = tk.mixed_rank_counts(parts, g, WEIGHTS, positives, exclude, config=config)
    assert_counts_equal(got, reference.mixed_rank_counts(parts, g, WEIGHTS, positives, exclude),
                        torch.float32)


def test_mixed_rank_counts_with_ties_equal_a_direct_ranking_per_triple():
    """Exact scores and dyadic weights: each triple's counts, ties included, equal
    ranking the explicitly mixed query m = w . (q, t, f) against the gallery."""
    gen = torch.Generator().manual_seed(4)
    parts = tuple(exact_unit_rows(29, 12, gen) for _ in range(3))
    g = exact_unit_rows(150, 12, gen)
    positives = torch.randint(0, 150, (29, 3), generator=gen)
    positives[1::4, -1] = -1
    exclude = (positives[:, 0] + 7) % 150
    exclude[::3] = -1
    greater, equal, _ = tk.mixed_rank_counts(parts, g, WEIGHTS, positives, exclude, config=SMALL_BLOCKS)
    valid = positives >= 0
    for i, w in enumerate(WEIGHTS):
        unit = [torch.nn.functional.normalize(x, dim=-1) for x in (*parts, g)]
        mixed = w[0] * unit[0] + w[1] * unit[1] + w[2] * unit[2]
        direct = reference.target_rank_counts(mixed, unit[3], positives, exclude)
        assert torch.equal(greater[i][valid], direct[0][valid]), i
        assert torch.equal(equal[i][valid], direct[1][valid]), i
    assert equal.sum() > 0  # the case has ties to get right


def test_mixed_rank_counts_fp16_agree_but_for_near_ties():
    parts, g, positives, exclude = make_mixed_problem(40, 400, 64, seed=8)
    half = tuple(x.half() for x in parts)
    got = tk.mixed_rank_counts(half, g.half(), WEIGHTS, positives, exclude)
    expected = reference.mixed_rank_counts(half, g.half(), WEIGHTS, positives, exclude)
    valid = (positives >= 0)[None].expand_as(got[0])
    moved = (got[0] - expected[0]).abs()[valid]
    assert moved.max() <= 3 and (moved > 0).float().mean() < 0.05  # fp16 rounding of the unit vectors
    torch.testing.assert_close(got[2][valid], expected[2][valid], atol=2e-3, rtol=0)
