"""The chunked torch reference against direct full-matrix computations."""

from __future__ import annotations

import pytest
import torch

import coir_kernels
from coir_kernels import reference


def brute_counts(q, g, positives, exclude):
    scores = q @ g.T
    greater = torch.zeros_like(positives)
    equal = torch.zeros_like(positives)
    for i in range(q.shape[0]):
        for p in range(positives.shape[1]):
            j = positives[i, p].item()
            if j < 0:
                continue
            others = [c for c in range(g.shape[0]) if c != j and c != exclude[i].item()]
            greater[i, p] = sum(bool(scores[i, c] > scores[i, j]) for c in others)
            equal[i, p] = sum(bool(scores[i, c] == scores[i, j]) for c in others)
    return greater, equal


@pytest.mark.parametrize("chunk", [1, 7, None])
def test_rank_counts_match_brute_force_for_any_chunk(chunk):
    torch.manual_seed(0)
    q = torch.randint(-2, 3, (23, 8)).float()  # integer embeddings: exact ties
    g = torch.randint(-2, 3, (41, 8)).float()
    positives = torch.randint(0, 41, (23, 3))
    positives[::4, 2] = -1
    exclude = torch.randint(0, 41, (23,))
    exclude[positives[:, 0] == exclude] = -1  # positives never excluded
    exclude[::5] = -1
    greater, equal, pos_scores = reference.target_rank_counts(q, g, positives, exclude, chunk=chunk)
    expected_greater, expected_equal = brute_counts(q, g, positives, exclude)
    mask = positives >= 0
    assert torch.equal(greater[mask], expected_greater[mask])
    assert torch.equal(equal[mask], expected_equal[mask])
    assert torch.isnan(pos_scores[~mask]).all()


@pytest.mark.parametrize("k", [1, 5, 40])
def test_topk_excluding_is_a_stable_sorted_prefix(k):
    torch.manual_seed(1)
    q = torch.randint(-1, 2, (13, 4)).float()
    g = torch.randint(-1, 2, (41, 4)).float()
    exclude = torch.randint(0, 41, (13,))
    values, indices = reference.topk_excluding(q, g, k, exclude, chunk=5)
    scores = q @ g.T
    for i in range(13):
        order = [j for j in sorted(range(41), key=lambda j: (-scores[i, j].item(), j)) if j != exclude[i]]
        assert indices[i].tolist() == order[:k]
        assert exclude[i].item() not in indices[i].tolist()
    assert values.shape == (13, min(k, 40))


def test_public_functions_check_shapes():
    with pytest.raises(ValueError, match="same D"):
        coir_kernels.topk_excluding(torch.zeros(2, 3), torch.zeros(4, 5), 1, torch.full((2,), -1))
    with pytest.raises(ValueError, match="empty"):
        coir_kernels.topk_excluding(torch.zeros(2, 3), torch.zeros(0, 3), 1, torch.full((2,), -1))
    with pytest.raises(ValueError, match="unknown kernel implementation"):
        coir_kernels.topk_excluding(torch.zeros(2, 3), torch.zeros(4, 3), 1, torch.full((2,), -1), impl="cuda-magic")


@pytest.mark.parametrize("query_tokens", [None, 4])
def test_maxsim_matches_einsum_in_any_block_size(query_tokens, monkeypatch):
    torch.manual_seed(2)
    q = torch.randn(9, 8) if query_tokens is None else torch.randn(9, query_tokens, 8)
    g = torch.randn(31, 6, 8)
    if query_tokens is None:
        expected = torch.einsum("qd,gtd->qgt", q, g).amax(-1)
    else:
        expected = torch.einsum("qsd,gtd->qgst", q, g).amax((-1, -2))
    monkeypatch.setattr(reference, "MAXSIM_BLOCK_ELEMENTS", 100)  # many gallery blocks
    torch.testing.assert_close(reference.similarity(q, g), expected)
    rows = torch.arange(9) % 31
    torch.testing.assert_close(reference.rowwise_similarity(q, g[rows]), expected[torch.arange(9), rows])
    # rank counts run on the same scores
    positives = rows[:, None]
    greater, _, pos_scores = reference.target_rank_counts(q, g, positives, torch.full((9,), -1), chunk=4)
    torch.testing.assert_close(pos_scores[:, 0], expected[torch.arange(9), rows])
    assert torch.equal(greater[:, 0], (expected > expected[torch.arange(9), rows][:, None]).sum(1))


def test_mixed_rank_counts_equal_direct_evaluation_of_each_triple():
    """One pass over every triple gives, for each, the counts of scoring the explicitly
    mixed and renormalised query; one-hot triples give the single parts' counts."""
    torch.manual_seed(3)
    q, t, f = (torch.randn(40, 16) for _ in range(3))
    g = torch.randn(300, 16)
    positives = torch.randint(0, 300, (40, 2))
    exclude = torch.randint(0, 300, (40,))
    exclude[(positives == exclude[:, None]).any(1)] = -1
    weights = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.2, 0.3, 0.5], [0.6, 0.0, 0.4]])
    greater, equal, _ = coir_kernels.mixed_rank_counts((q, t, f), g, weights, positives, exclude)
    unit = [torch.nn.functional.normalize(x, dim=-1) for x in (q, t, f)]
    gallery = torch.nn.functional.normalize(g, dim=-1)
    for i, w in enumerate(weights):
        mixed = torch.nn.functional.normalize(w[0] * unit[0] + w[1] * unit[1] + w[2] * unit[2], dim=-1)
        expected_greater, expected_equal, _ = reference.target_rank_counts(mixed, gallery, positives, exclude)
        assert torch.equal(greater[i], expected_greater), i
        assert torch.equal(equal[i], expected_equal), i


@pytest.mark.parametrize("kind", ["near-target", "random", "ties"])
def test_settling_items_no_triple_can_move_changes_no_count(kind, monkeypatch):
    """A sweep (many triples) skips items that every triple ranks the same way; its
    counts, ties and the excluded item included, equal evaluating every item."""
    gen = torch.Generator().manual_seed(5)
    g = torch.nn.functional.normalize(torch.randn(400, 16, generator=gen), dim=-1)
    positives = torch.randint(0, 400, (70, 2), generator=gen)
    positives[::5, 1] = -1
    exclude = (positives[:, 0] + 3) % 400
    exclude[::4] = -1
    if kind == "ties":  # scores in steps of 1/4: exact zeros everywhere
        g = torch.randint(-1, 2, (400, 16), generator=gen).float()
        parts = tuple(torch.randint(-1, 2, (70, 16), generator=gen).float() for _ in range(3))
    elif kind == "near-target":  # parts close to the positive: most items settle
        parts = tuple(g[positives[:, 0]] + 0.3 * torch.randn(70, 16, generator=gen) for _ in range(3))
    else:
        parts = tuple(torch.randn(70, 16, generator=gen) for _ in range(3))
    grid = torch.tensor([(a / 8, b / 8, (8 - a - b) / 8) for a in range(9) for b in range(9 - a)])
    swept = reference.mixed_rank_counts(parts, g, grid, positives, exclude, chunk=16)
    monkeypatch.setattr(reference, "MIN_TRIPLES_TO_SETTLE", 10**9)
    every_item = reference.mixed_rank_counts(parts, g, grid, positives, exclude, chunk=16)
    assert torch.equal(swept[0], every_item[0]) and torch.equal(swept[1], every_item[1])
    if kind == "ties":
        assert swept[1].sum() > 0


def test_mixed_rank_counts_refuse_bad_weights_and_multi_vector():
    q = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"\(W, 3\)"):
        coir_kernels.mixed_rank_counts((q, q, q), torch.randn(5, 4), torch.ones(2, 2), torch.zeros(3, 1).long(),
                                  torch.full((3,), -1))
    with pytest.raises(ValueError, match="single-vector"):
        coir_kernels.mixed_rank_counts((q, q, q), torch.randn(5, 2, 4), torch.ones(1, 3), torch.zeros(3, 1).long(),
                                  torch.full((3,), -1))


def test_stable_top_is_the_head_of_the_stable_sort_with_ties_across_the_cut():
    """coir_kernels/stable_top.py: rows with and without ties at the k-th value, every k."""
    from coir_kernels.stable_top import stable_top

    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (300, 40), generator=generator).float()  # many ties
    scores[:100] = torch.randn(100, 40, generator=generator)  # rows without ties
    scores[5, 7] = float("-inf")
    for k in (0, 1, 3, 10, 40):
        values, indices = stable_top(scores, k)
        expected = torch.sort(scores, dim=1, descending=True, stable=True)
        assert torch.equal(values, expected.values[:, :k]) and torch.equal(indices, expected.indices[:, :k])
