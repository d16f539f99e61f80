"""The mixing sweep's counts and the fp32 reference's rank counts of a gallery split
across 2 gloo ranks (harness/evaluation/sharded_mixed.py, sharded.py
`tiled_rank_counts`) are one process's, copies across shards included, and the
ranks take one process's decision to hand a dense band to the reference."""

from __future__ import annotations

import pytest
import torch

from coir_kernels import reference, two_stage
from tests._distributed import run_on_ranks
from tests.coir_kernels.problems import exact_unit_rows, make_problem

WEIGHTS = torch.tensor([[a / 4, b / 4, (4 - a - b) / 4] for a in range(5) for b in range(5 - a)])  # 15 triples


def random_problem():
    """Spread unit vectors, each query's parts near its target (its first positive; the
    second, where there is one, a copy of the first): the two-stage band holds few items,
    and its counts are exact (every near-tie rescored), so they cannot depend on a
    GEMM's blocking."""
    gen = torch.Generator().manual_seed(3)
    g = torch.nn.functional.normalize(torch.randn(301, 24, generator=gen), dim=-1)
    target = torch.randint(0, 151, (40,), generator=gen)  # in the first shard
    parts = tuple(torch.nn.functional.normalize(g[target] + s * torch.randn(40, 24, generator=gen), dim=-1)
                  for s in (0.2, 0.3, 0.1))
    positives = torch.stack([target, torch.full_like(target, -1)], 1)
    positives[0, 1] = 290
    return parts, _with_copies(g, target, positives, gen)


def exact_problem():
    """Rows of four +-1 entries: every score, difference and mixed score (weights in
    quarters) is exact in fp32, so the reference's GEMM gives the same bits in any shard;
    ties everywhere."""
    gen = torch.Generator().manual_seed(4)
    g = exact_unit_rows(301, 16, gen)
    target = torch.randint(0, 151, (40,), generator=gen)
    parts = (g[target], exact_unit_rows(40, 16, gen), g[target].roll(1, 1))
    positives = torch.stack([target, torch.randint(0, 301, (40,), generator=gen)], 1)
    positives[::3, 1] = -1
    return parts, _with_copies(g, target, positives, gen)


def _with_copies(g, target, positives, gen):
    g[20] = g[280]  # a copy across the two shards (151 rows each)
    g[21] = g[22]  # a copy within a shard
    g[290] = g[target[0]]  # a copy of query 0's target, in the other shard
    exclude = (target + 7) % 301
    exclude[::4] = -1
    return g, positives, exclude


CASES = [("random", "two-stage", None), ("exact", "reference", None),
         ("exact", "two-stage", 0.0)]  # ties are unsettled items: every chunk goes to the reference


def _on_rank(rank: int, world: int):
    """(every mixed case's counts on this rank with the first rows it handed to the
    reference, the fp32 reference's rank counts of `integer_problem`): one spawn for both tests."""
    from harness.evaluation import sharded, sharded_mixed

    handed: list[int] = []
    real = sharded_mixed._reference_rows
    sharded_mixed._reference_rows = lambda *args: handed.append(args[5]) or real(*args)
    out = []
    for kind, impl, dense_band in CASES:
        two_stage.DENSE_BAND_MIXED = 0.05 if dense_band is None else dense_band
        parts, (g, positives, exclude) = random_problem() if kind == "random" else exact_problem()
        start, stop = sharded.shard_bounds(g.shape[0], rank, world)
        counts = sharded_mixed.mixed_rank_counts(parts, g[start:stop], start, g.shape[0], WEIGHTS, positives,
                                                 exclude, impl)
        out.append((counts, list(handed)))
        handed.clear()
    q, g, positives, exclude = integer_problem()
    start, stop = sharded.shard_bounds(g.shape[0], rank, world)
    return out, sharded.tiled_rank_counts(q, g[start:stop], start, g.shape[0], positives, exclude)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return run_on_ranks(_on_rank, 2, tmp_path_factory.mktemp("ranks"))


def _same(a, b) -> bool:
    return all(torch.equal(torch.nan_to_num(x, nan=-7.0), torch.nan_to_num(y, nan=-7.0)) for x, y in zip(a, b))


def test_two_ranks_give_one_process_mixed_counts(ranks, monkeypatch):
    assert two_stage.DENSE_BAND_MIXED == 0.05  # what the ranks restore between cases
    for case, (kind, impl, dense_band) in enumerate(CASES):
        parts, (g, positives, exclude) = random_problem() if kind == "random" else exact_problem()
        monkeypatch.setattr(two_stage, "DENSE_BAND_MIXED", 0.05 if dense_band is None else dense_band)
        one = (two_stage if impl == "two-stage" else reference).mixed_rank_counts(parts, g, WEIGHTS, positives,
                                                                                   exclude)
        for results in ranks:
            counts, handed = results[0][case]
            assert _same(counts, one), (kind, impl, dense_band)
            assert handed == ([] if impl == "two-stage" and dense_band is None else [0]), (kind, impl, dense_band)
        assert int(one[1].sum()) > 0  # ties counted: the copy of a positive across shards at least


def integer_problem():
    """Integer rows: exact scores, so the GEMM's bits are the same in any shard."""
    q, g, positives, exclude = make_problem(40, 301, 24, num_pos=2, kind="integer", seed=8)
    g[290] = g[positives[0, 0]]
    return q, g, positives, exclude


def test_two_ranks_give_the_fp32_reference_counts(ranks):
    q, g, positives, exclude = integer_problem()
    one = reference.target_rank_counts(q, g, positives, exclude)
    for results in ranks:
        assert _same(results[1], one)
    assert int(one[1].sum()) > 0
