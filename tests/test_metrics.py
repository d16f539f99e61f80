"""CIRR metrics on hand-made cases whose answer you can see, and against a plain
full-sort implementation on random scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coir_kernels.reference import rank_counts_dense
from harness.evaluation.metrics import (
    QueryLabels,
    build_labels,
    cirr_metrics,
    ranks_with_ties,
    recalls,
)
from harness.suites.base import Query


def embed_scores(scores: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Query/gallery embeddings whose inner products are exactly `scores` (Q, G):
    queries are one-hot rows, gallery columns carry the scores."""
    q, g = scores.shape
    return torch.eye(q), torch.tensor(scores, dtype=torch.float32).T.contiguous()


def one_query(gallery_scores, reference, target, members=None, soft=None, qi=0, num_queries=1):
    ids = [f"g{i}" for i in range(len(gallery_scores))]
    members = members if members is not None else ids[:6]
    return Query(
        pair_id=qi, reference=ids[reference], caption="c", target=ids[target],
        target_soft=soft if soft is not None else {ids[target]: 1.0}, members=tuple(members),
    ), {g: i for i, g in enumerate(ids)}


def metrics_for(scores_row, reference, target, **kwargs):
    query, index = one_query(scores_row, reference, target, kwargs.pop("members", None), kwargs.pop("soft", None))
    q, g = embed_scores(np.array([scores_row], dtype=np.float32))
    return cirr_metrics(q, g, build_labels([query], index), **kwargs)


def test_reference_removed_even_when_it_is_the_best_match():
    # reference g0 scores highest; target g1 is second overall, hence first once g0 is removed
    m = metrics_for([0.9, 0.8, 0.1, 0.2, 0.3, 0.0, -0.1], reference=0, target=1)
    assert m["R@1"] == 100.0 and m["Rsubset@1"] == 100.0


def test_target_rank_counts_only_candidates_above_it():
    # target g3 (0.5) has g1 (0.7) and g2 (0.6) above it: rank 2 -> miss at 1, hit at 5
    m = metrics_for([0.0, 0.7, 0.6, 0.5, 0.1, 0.2, 0.3], reference=0, target=3)
    assert m["R@1"] == 0.0 and m["R@5"] == 100.0
    assert m["Rsubset@1"] == 0.0 and m["Rsubset@2"] == 0.0 and m["Rsubset@3"] == 100.0
    assert m["Avg"] == pytest.approx((100.0 + 0.0) / 2)


def test_ties_pessimistic_and_optimistic():
    # target g2 ties g1 at 0.5: pessimistic puts g1 first, optimistic puts the target first
    row = [0.0, 0.5, 0.5, 0.1, 0.1, 0.1, 0.1]
    assert metrics_for(row, 0, 2, tie_rule="pessimistic")["R@1"] == 0.0
    assert metrics_for(row, 0, 2, tie_rule="optimistic")["R@1"] == 100.0
    # all-equal scores: pessimistic rank is the number of other candidates (5)
    flat = [0.3] * 7
    m = metrics_for(flat, 0, 2, tie_rule="pessimistic")
    assert m["R@5"] == 0.0 and m["R@10"] == 100.0


def test_subset_ranks_within_members_minus_reference():
    # members g0..g5; non-member g6 scores highest and must not count within the subset
    row = [0.0, 0.2, 0.6, 0.1, 0.3, 0.4, 0.95]
    m = metrics_for(row, reference=0, target=2)
    assert m["R@1"] == 0.0 and m["R@5"] == 100.0
    assert m["Rsubset@1"] == 100.0


def test_conventions_differ_on_soft_labels():
    # hard target g1 is absent from target_soft (as 37 real val queries are); soft g2 = 0.5, g3 = -1
    soft = {"g2": 0.5, "g3": -1.0}
    row = [0.0, 0.4, 0.9, 0.8, 0.1, 0.1, 0.1]
    covr = metrics_for(row, 0, 1, soft=soft, convention="covr")
    official = metrics_for(row, 0, 1, soft=soft, convention="cirplant")
    assert covr["R@1"] == 0.0 and covr["R@5"] == 100.0  # hard target ranks third
    assert official["R@1"] == 50.0  # best soft label in the top 1 (g2) is 0.5
    assert official["R@5"] == 50.0  # the hard target carries no soft label: worth 0 there
    assert covr["Rsubset@1"] == official["Rsubset@1"] == 50.0
    # CLIP4Cir: the hard target for both; within the subset it ranks after g2 and g3
    clip4cir = metrics_for(row, 0, 1, soft=soft, convention="clip4cir")
    assert clip4cir["R@5"] == covr["R@5"] == 100.0 and clip4cir["R@1"] == 0.0
    assert clip4cir["Rsubset@1"] == 0.0 and clip4cir["Rsubset@3"] == 100.0


def argsort_recalls(scores: np.ndarray, reference: np.ndarray, target: np.ndarray, ks):
    """The plain way: sort every row (stable), drop the reference, find the target."""
    ranks = []
    for row, ref, tgt in zip(scores, reference, target):
        order = [j for j in np.argsort(-row, kind="stable") if j != ref]
        ranks.append(order.index(tgt))
    ranks = np.array(ranks)
    return {k: 100.0 * np.mean(ranks < k) for k in ks}


@pytest.mark.parametrize("num_queries,num_gallery", [(37, 101), (200, 613)])
def test_recall_matches_argsort_on_random_scores(num_queries, num_gallery):
    rng = np.random.default_rng(num_gallery)
    q = torch.tensor(rng.standard_normal((num_queries, 32)), dtype=torch.float32)
    g = torch.tensor(rng.standard_normal((num_gallery, 32)), dtype=torch.float32)
    reference = rng.integers(0, num_gallery, num_queries)
    target = (reference + rng.integers(1, num_gallery, num_queries)) % num_gallery
    ids = [f"g{i}" for i in range(num_gallery)]
    queries = [
        Query(i, ids[r], "c", ids[t], {ids[t]: 1.0}, tuple(ids[(r + j) % num_gallery] for j in range(6)))
        for i, (r, t) in enumerate(zip(reference, target))
    ]
    ours = cirr_metrics(q, g, build_labels(queries, {x: i for i, x in enumerate(ids)}))
    expected = argsort_recalls((q @ g.T).numpy(), reference, target, (1, 5, 10, 50))
    for k, value in expected.items():
        assert ours[f"R@{k}"] == pytest.approx(value)


def test_tie_arithmetic_matches_brute_force_with_labels():
    """Ties between several labelled positives: rank = candidates placed before each
    positive when ties are ordered by label (ascending if pessimistic)."""
    rng = np.random.default_rng(3)
    scores = torch.tensor(rng.integers(0, 4, (50, 12)), dtype=torch.float32)  # many ties
    valid = torch.tensor(rng.random((50, 12)) > 0.1)
    positives = torch.stack([torch.randperm(12)[:3] for _ in range(50)])
    valid.scatter_(1, positives, True)  # positives always take part in their ranking
    labels_full = torch.zeros(50, 12)
    labels = torch.tensor(rng.choice([0.2, 0.5, 1.0], (50, 3)), dtype=torch.float32)
    labels_full.scatter_(1, positives, labels)
    greater, equal, pos_scores = rank_counts_dense(scores, valid, positives)
    tie_goes_before = {
        "pessimistic": lambda other, own: other <= own,
        "optimistic": lambda other, own: other > own,
    }
    for rule, before_on_tie in tie_goes_before.items():
        ranks = ranks_with_ties(greater, equal, pos_scores, labels, rule)
        for i in range(50):
            for p in range(3):
                j = positives[i, p].item()
                expected = sum(
                    bool(scores[i, c] > scores[i, j])
                    or bool(scores[i, c] == scores[i, j] and before_on_tie(labels_full[i, c], labels_full[i, j]))
                    for c in range(12)
                    if c != j and valid[i, c]
                )
                assert ranks[i, p].item() == expected, (rule, i, p)


def test_recalls_ignore_padding():
    ranks = torch.tensor([[0, torch.iinfo(torch.long).max]])
    labels = torch.tensor([[0.5, 1.0]])
    assert recalls(ranks, labels, [1]) == {1: 50.0}


def test_labels_padding_shapes():
    query, index = one_query([0.0] * 7, 0, 1, soft={"g1": 1.0, "g2": 0.5, "g6": 0.2})
    labels: QueryLabels = build_labels([query], index)
    assert labels.positives.tolist() == [[1, 2, 6]]
    assert labels.member_positives.tolist() == [[1, 2, -1]]  # g6 is not a member


def test_percentages_are_exact_in_float64():
    """76 hits of 600 queries is 7600 / 600 = 12.666666666666666, not float32's
    12.666666507720947; the sweep's per-variant recalls and mAP use the same sums."""
    from harness.evaluation.average_precision import map_metrics
    from harness.evaluation.metrics import metrics_from_counts

    hit = torch.zeros(600, 1, dtype=torch.long).masked_fill(torch.arange(600)[:, None] >= 76, 100)
    labels = torch.ones(600, 1)
    assert recalls(hit, labels, [1])[1] == 12.666666666666666 == 7600 / 600
    query, index = one_query([0.0] * 7, 0, 1)
    many = build_labels([query] * 600, index)
    counts = (hit, torch.zeros_like(hit), torch.zeros(600, 1))
    both = tuple(torch.stack([c, c]) for c in counts)  # two variants of a sweep
    assert metrics_from_counts(both, both, many)["R@1"] == [7600 / 600, 7600 / 600]
    # mAP@K and R@K of CIRCO's protocol: queries 0..75 find their target first
    q = torch.zeros(600, 8)
    q[:, 0] = 1.0  # every query scores gallery item 0 highest
    g = torch.eye(8)
    target = torch.where(torch.arange(600) < 76, 0, 7)[:, None]
    metrics = map_metrics(q, g, target, torch.ones(600, dtype=torch.long), torch.full((600,), -1),
                          map_ks=[1], recall_ks=[1])
    assert metrics["R@1"] == 7600 / 600 and metrics["mAP@1"] == 7600 / 600


def test_soft_labels_count_in_float64():
    """A hit on a 0.2 soft label counts 0.2 exactly (float32 would give 0.20000000298)."""
    ids = [f"g{i}" for i in range(7)]
    query = Query(pair_id=0, reference=ids[0], caption="c", target=ids[1], target_soft={ids[2]: 0.2},
                  members=tuple(ids[:6]))
    labels = build_labels([query], {g: i for i, g in enumerate(ids)})
    assert labels.soft.dtype == torch.float64 and labels.soft[0, 1].item() == 0.2
    q, g = embed_scores(np.array([[0.0, 0.1, 0.9, 0.3, 0.2, 0.4, 0.5]], dtype=np.float32))
    m = cirr_metrics(q, g, labels, convention="cirplant")
    assert m["R@1"] == 100.0 * 0.2 and m["Rsubset@1"] == 100.0 * 0.2
