"""The compiled counting loops of the CPU reference against plain torch."""

from __future__ import annotations

import pytest
import torch

from coir_kernels import counting


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "eager"])
def test_count_above_matches_plain_comparisons_across_column_blocks(compiled, monkeypatch):
    monkeypatch.setenv("COIR_COMPILE", "1" if compiled else "0")
    monkeypatch.setattr(counting, "_eager_left", 0)  # past the eager budget: compiled if allowed
    gen = torch.Generator().manual_seed(0)
    columns = counting.MAX_COLUMNS + 77  # two counting blocks, the second ragged
    scores = torch.randint(-3, 4, (5, columns), generator=gen).float()
    scores[2, ::5] = float("nan")  # nan counts in neither
    threshold = torch.tensor([0.0, 1.0, -1.0, 3.0, 4.0])
    greater, at_least = counting.count_above(scores, threshold)
    assert torch.equal(greater, (scores > threshold[:, None]).sum(1))
    assert torch.equal(at_least, (scores >= threshold[:, None]).sum(1))
    assert at_least[4] == 0 and greater[3] == 0


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "eager"])
def test_mixed_counts_match_explicit_mixing(compiled, monkeypatch):
    monkeypatch.setenv("COIR_COMPILE", "1" if compiled else "0")
    gen = torch.Generator().manual_seed(1)
    differences = torch.randint(-2, 3, (3, 7, 300), generator=gen).float() / 4
    differences[:, 3, 10] = float("nan")
    weights = torch.tensor([[1.0, 0, 0], [0.25, 0.25, 0.5], [0, 0.5, 0.5], [-1.0, 2.0, 0.0]])
    greater, at_least = counting.count_mixed_above_zero(differences, weights)
    mixed = torch.einsum("wk,krc->wrc", weights, differences)
    assert torch.equal(greater, (mixed > 0).sum(-1))
    assert torch.equal(at_least, (mixed >= 0).sum(-1))
    assert (at_least - greater).sum() > 0  # exact zeros: ties were counted


def test_small_counting_runs_eagerly_until_its_budget_is_spent(monkeypatch):
    """Compiling costs seconds once per process: the comparison counts compile only
    after EAGER_SCORES scores were counted eagerly (the same integers either way)."""
    compiled = []
    monkeypatch.setenv("COIR_COMPILE", "1")
    monkeypatch.setattr(counting, "_eager_left", 1000)
    monkeypatch.setattr(counting, "_compiled", lambda fn: compiled.append(fn.__name__) or fn)
    scores = torch.arange(600.0).view(2, 300)
    threshold = torch.tensor([10.0, 400.0])
    assert counting.count_above(scores, threshold)[0].tolist() == [289, 199]
    assert compiled == [] and counting._eager_left == 400
    counting.count_band(scores.bfloat16(), threshold, threshold)
    assert compiled == [] and counting._eager_left == -200
    assert counting.count_above(scores, threshold)[1].tolist() == [290, 200]
    assert compiled == ["_packed_counts"]


def test_counting_on_one_thread_gives_the_same_counts_and_restores_the_threads(monkeypatch):
    """Between numpy GEMMs (coir_kernels/reference.py) the counts run on one torch
    thread; they are the same integers, and torch's thread count comes back."""
    monkeypatch.setattr(counting, "_eager_left", 0)  # compiled, as at scale
    gen = torch.Generator().manual_seed(2)
    scores = torch.randn(37, counting.MAX_COLUMNS + 501, generator=gen)
    scores[3, 7] = float("nan")
    threshold = scores[:, 11].clone()
    threads = torch.get_num_threads()
    seen = []
    original = counting._packed_counts_one_thread
    counting._packed_counts_one_thread = lambda *a: seen.append(torch.get_num_threads()) or original(*a)
    try:
        assert [t.tolist() for t in counting.count_above(scores, threshold, one_thread=True)] == \
            [t.tolist() for t in counting.count_above(scores, threshold)]
    finally:
        counting._packed_counts_one_thread = original
    assert torch.get_num_threads() == threads
    assert seen == [1, 1]  # two column blocks, each counted on one thread
