"""mAP@K with several ground truths (CIRCO's definition), checked on hand-made
rankings whose answer you can see, and against a plain full-sort implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.evaluation.average_precision import average_precision_at, map_metrics


def embeddings_for(score_rows: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and a gallery whose inner products are exactly score_rows (Q, G):
    query i is the i-th unit vector, gallery item g holds column g of the scores."""
    scores = torch.tensor(score_rows, dtype=torch.float32)
    return torch.eye(len(score_rows)), scores.T.contiguous()


def metrics_for(score_rows, ground_truths, references=None, counts=None, tie_rule="pessimistic"):
    query, gallery = embeddings_for(score_rows)
    width = max(len(g) for g in ground_truths)
    positives = torch.full((len(score_rows), width), -1, dtype=torch.long)
    for i, gts in enumerate(ground_truths):
        positives[i, : len(gts)] = torch.tensor(gts)
    counts = torch.tensor(counts or [len(g) for g in ground_truths])
    exclude = torch.tensor(references or [-1] * len(score_rows))
    return map_metrics(query, gallery, positives, counts, exclude, tie_rule, map_ks=(1, 2, 5, 10), recall_ks=(1, 5))


def descending(n: int) -> list[float]:
    """Scores that rank gallery item g at position g."""
    return [1.0 - 0.01 * g for g in range(n)]


def test_two_ground_truths_first_and_third():
    # hits at positions 1 and 3: AP@5 = (1/1 + 2/3) / min(2, 5)
    m = metrics_for([descending(10)], [[0, 2]])
    assert m["mAP@5"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert m["mAP@1"] == pytest.approx(100.0)  # 1 / min(2, 1)
    assert m["mAP@2"] == pytest.approx(50.0)  # (1/1) / 2
    assert m["R@1"] == 100.0


def test_fewer_ground_truths_than_k_normalise_by_their_number():
    # 3 ground truths at positions 2, 4 and 10: found ones are divided by min(3, K), not by hits
    m = metrics_for([descending(12)], [[1, 3, 9]])
    assert m["mAP@5"] == pytest.approx(100 * (1 / 2 + 2 / 4) / 3)
    assert m["mAP@10"] == pytest.approx(100 * (1 / 2 + 2 / 4 + 3 / 10) / 3)
    assert m["R@1"] == 0.0 and m["R@5"] == 100.0  # the target (first listed) is at position 2


def test_more_ground_truths_than_k():
    # 6 ground truths filling the first 5 places: AP@5 = 5 / min(6, 5) = 1
    m = metrics_for([descending(10)], [[0, 1, 2, 3, 4, 5]])
    assert m["mAP@5"] == pytest.approx(100.0)
    assert m["mAP@10"] == pytest.approx(100.0)


def test_mean_over_queries_and_target_column():
    # query 0: one ground truth first (AP 1); query 1: its target at position 3, a second
    # ground truth first: AP@5 = (1/1 + 2/3) / 2, R@1 on the target misses
    rows = [descending(8), descending(8)]
    m = metrics_for(rows, [[0], [2, 0]])
    assert m["mAP@5"] == pytest.approx(100 * (1 + (1 + 2 / 3) / 2) / 2)
    assert m["R@1"] == pytest.approx(50.0)


def test_reference_is_removed_from_the_ranking():
    # item 0 scores highest but is the reference: the ground truth at 1 becomes first
    m = metrics_for([descending(6)], [[1]], references=[0])
    assert m["mAP@1"] == 100.0 and m["R@1"] == 100.0


def test_ground_truth_that_cannot_be_ranked_still_counts():
    # 2 ground truths, one unrankable (padding): the other first gives AP@5 = 1 / 2
    m = metrics_for([descending(6)], [[0]], counts=[2])
    assert m["mAP@5"] == pytest.approx(50.0)


def test_ties_between_ground_truths_take_consecutive_places():
    # two ground truths tie at the top: places 1 and 2 in either order, AP = 1
    m = metrics_for([[1.0, 1.0, 0.5, 0.4]], [[0, 1]])
    assert m["mAP@2"] == pytest.approx(100.0)


def test_tie_with_another_candidate_follows_the_tie_rule():
    row = [[0.5, 0.9, 0.5, 0.1]]  # ground truth 2 ties candidate 0, candidate 1 is first
    assert metrics_for(row, [[2]], tie_rule="pessimistic")["mAP@2"] == 0.0
    assert metrics_for(row, [[2]], tie_rule="optimistic")["mAP@2"] == pytest.approx(50.0)


def official_map(scores: np.ndarray, gts: list[list[int]], k: int) -> float:
    """CIRCO's evaluation, written plainly: full sort, isin, cumulative precision."""
    aps = []
    for row, gt in zip(scores, gts):
        ranked = np.argsort(-row, kind="stable")[:k]
        labels = np.isin(ranked, gt)
        precisions = np.cumsum(labels) * labels / np.arange(1, len(ranked) + 1)
        aps.append(precisions.sum() / min(len(gt), k))
    return 100 * float(np.mean(aps))


@pytest.mark.parametrize("k", [5, 10, 25])
def test_matches_a_full_sort_implementation(k):
    rng = np.random.default_rng(0)
    scores = rng.random((40, 120)).astype(np.float32)  # continuous: no ties
    gts = [list(rng.choice(120, size=rng.integers(1, 9), replace=False)) for _ in range(40)]
    m = metrics_for(scores.tolist(), gts, tie_rule="pessimistic")
    query, gallery = embeddings_for(scores.tolist())
    assert np.allclose((query @ gallery.T).numpy(), scores)
    positives = torch.full((40, 8), -1, dtype=torch.long)
    for i, g in enumerate(gts):
        positives[i, : len(g)] = torch.tensor(g)
    counts = torch.tensor([len(g) for g in gts])
    got = map_metrics(query, gallery, positives, counts, torch.full((40,), -1), map_ks=(k,), recall_ks=(k,))
    assert got[f"mAP@{k}"] == pytest.approx(official_map(scores, gts, k), abs=1e-4)
    assert m["R@5"] == pytest.approx(100 * np.mean([g[0] in np.argsort(-r)[:5] for r, g in zip(scores, gts)]))


def test_average_precision_at_directly():
    positions = torch.tensor([[0, 2, torch.iinfo(torch.long).max]])
    assert average_precision_at(positions, torch.tensor([3]), 5).item() == pytest.approx((1 + 2 / 3) / 3)
