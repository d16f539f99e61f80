"""Per-query candidate galleries (coir_kernels/candidates.py) against a problem worked
out by hand in numpy: integer embeddings (every score exact), ties, a candidate shared
by several queries, a positive outside its query's candidates, an excluded item."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import coir_kernels
from coir_kernels import Candidates
from harness.evaluation.metrics import ranks_with_ties, values_at

# pool rows 1 and 4 are the same vector (copies); rows 0 and 2 differ but tie for query 0
POOL = np.array([[2, 0, 1], [1, 1, 0], [0, 2, 1], [3, 0, 0], [1, 1, 0], [0, 0, 2]], dtype=np.float32)
QUERIES = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]], dtype=np.float32)
CANDIDATES = [[0, 2, 3, 4, 1], [1, 2, 5, 4], [2, 3, 0, 3]]  # row 2 in all three; 3 listed twice in the last
POSITIVES = np.array([[2, 4], [1, 3], [0, -1]])  # query 1's second positive (3) is not a candidate of it
EXCLUDE = np.array([-1, 4, 3])  # query 1's candidate 4, query 2's candidate 3 take no part


@pytest.fixture(autouse=True)
def _eager(monkeypatch):
    """The counting loops run eagerly (the same integers; compiling them costs a minute here)."""
    monkeypatch.setenv("COIR_COMPILE", "0")


def by_hand():
    """greater / equal / score of every positive, one loop per query, as a reader would count."""
    scores = QUERIES @ POOL.T
    greater = np.zeros(POSITIVES.shape, dtype=np.int64)
    equal = np.zeros(POSITIVES.shape, dtype=np.int64)
    own = np.full(POSITIVES.shape, np.nan, dtype=np.float32)
    for i, row in enumerate(CANDIDATES):
        gallery = sorted(set(row) - {EXCLUDE[i]})
        for j, p in enumerate(POSITIVES[i]):
            if p < 0 or p not in gallery:
                continue
            s = scores[i, p]
            greater[i, j] = sum(scores[i, g] > s for g in gallery)
            equal[i, j] = sum(scores[i, g] == s for g in gallery if g != p)
            own[i, j] = s
    return greater, equal, own


def _tensors():
    candidates = Candidates.from_lists(CANDIDATES, len(POOL))
    return (torch.from_numpy(QUERIES), torch.from_numpy(POOL), candidates, torch.from_numpy(POSITIVES),
            torch.from_numpy(EXCLUDE))


def test_rank_counts_match_the_hand_count():
    greater, equal, own = coir_kernels.candidate_rank_counts(*_tensors())
    want_greater, want_equal, want_own = by_hand()
    # the hand count, written out: query 0 scores (2, 2, 2, 3, 2, 0) over candidates 0-4
    assert want_greater.tolist() == [[1, 1], [2, 0], [0, 0]]
    assert want_equal.tolist() == [[3, 3], [0, 0], [0, 0]]
    assert greater.tolist() == want_greater.tolist()
    assert equal.tolist() == want_equal.tolist()
    np.testing.assert_array_equal(own.numpy(), want_own)


def test_recall_from_the_counts_follows_the_tie_rule():
    greater, equal, own = coir_kernels.candidate_rank_counts(*_tensors())
    labels = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    pessimistic = ranks_with_ties(greater, equal, own, labels, "pessimistic")
    optimistic = ranks_with_ties(greater, equal, own, labels, "optimistic")
    # query 0: both positives tie with each other and two more at score 2, one scores 3 above them
    # (pessimistic: the three others at score 2 go first, so its rank is 4)
    assert values_at(pessimistic, labels, 1).tolist() == [0.0, 0.0, 1.0]
    assert values_at(pessimistic, labels, 4).tolist() == [0.0, 1.0, 1.0]
    assert values_at(pessimistic, labels, 5).tolist() == [1.0, 1.0, 1.0]
    assert values_at(optimistic, labels, 2).tolist() == [1.0, 0.0, 1.0]
    # query 1: its positive 3 is outside its candidates, so it never counts
    assert pessimistic[1, 1] == torch.iinfo(pessimistic.dtype).max


def test_topk_within_candidates_breaks_ties_by_pool_order():
    scores, items = coir_kernels.candidate_topk(*_tensors()[:3], 5, torch.from_numpy(EXCLUDE))
    full = QUERIES @ POOL.T
    for i, row in enumerate(CANDIDATES):
        gallery = sorted(set(row) - {EXCLUDE[i]})
        want = sorted(gallery, key=lambda g: (-full[i, g], g))
        got = [g for g in items[i].tolist() if g >= 0]
        assert got == want
        assert items[i, len(want):].eq(-1).all() and scores[i, len(want):].isnan().all()
    assert items[0].tolist() == [3, 0, 1, 2, 4]


# Every vector normalises exactly (one non-zero entry, or four equal ones) and every
# weight is a power of two: the mixed scores are exact, so the ties are real ones.
MIX_POOL = np.array([[1, 0, 0, 0], [0, 2, 0, 0], [1, 1, 1, 1], [0, 0, 3, 0], [1, 1, 1, 1], [0, 0, 0, 1]],
                    dtype=np.float32)
MIX_PARTS = [np.array([[1, 0, 0, 0], [0, 0, 1, 0], [1, 1, 1, 1]], dtype=np.float32),
             np.array([[0, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 2]], dtype=np.float32),
             np.array([[1, 1, 1, 1], [0, 0, 4, 0], [1, 0, 0, 0]], dtype=np.float32)]
MIX_WEIGHTS = np.array([[1, 0, 0], [0, 1, 0], [0.5, 0.25, 0.25], [0, 0.5, 0.5]], dtype=np.float32)


def test_mixed_counts_match_the_mixed_query_by_hand():
    candidates = Candidates.from_lists(CANDIDATES, len(MIX_POOL))
    greater, equal, own = coir_kernels.candidate_mixed_rank_counts(
        tuple(torch.from_numpy(p) for p in MIX_PARTS), torch.from_numpy(MIX_POOL), torch.from_numpy(MIX_WEIGHTS),
        candidates, torch.from_numpy(POSITIVES), torch.from_numpy(EXCLUDE))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    for w, weight in enumerate(MIX_WEIGHTS):
        scores = sum(weight[k] * unit(MIX_PARTS[k]) @ unit(MIX_POOL).T for k in range(3))
        for i, row in enumerate(CANDIDATES):
            gallery = sorted(set(row) - {EXCLUDE[i]})
            for j, p in enumerate(POSITIVES[i]):
                if p < 0 or p not in gallery:
                    assert greater[w, i, j] == 0 and equal[w, i, j] == 0 and own[w, i, j].isnan()
                    continue
                assert greater[w, i, j] == sum(scores[i, c] > scores[i, p] for c in gallery)
                assert equal[w, i, j] == sum(scores[i, c] == scores[i, p] for c in gallery if c != p)
                assert own[w, i, j] == scores[i, p]
    # the ties are there: under the third triple query 0 scores candidates 0, 2 and 4 (2 and 4 copies) 0.625
    assert equal[2, 0].tolist() == [2, 2]


def test_single_weight_mixing_equals_plain_counts():
    q, pool, candidates, positives, exclude = _tensors()
    normed = torch.nn.functional.normalize(q, dim=-1)
    plain = coir_kernels.candidate_rank_counts(normed, torch.nn.functional.normalize(pool, dim=-1), candidates,
                                               positives, exclude)
    mixed = coir_kernels.candidate_mixed_rank_counts((q, q, q), pool, torch.tensor([[0.0, 0.0, 1.0]]), candidates,
                                                     positives, exclude)
    assert mixed[0][0].tolist() == plain[0].tolist() and mixed[1][0].tolist() == plain[1].tolist()


def test_bad_candidates_are_refused():
    with pytest.raises(ValueError, match="query 1: candidate rows must lie in"):
        Candidates.from_lists([[0], [7]], 6)
    q, pool, candidates, positives, exclude = _tensors()
    with pytest.raises(ValueError, match="candidates for 3 queries"):
        coir_kernels.candidate_rank_counts(q[:2], pool, candidates, positives[:2], exclude[:2])


def test_a_whole_pool_row_is_stored_as_a_flag_and_counts_as_every_row():
    q, pool, _, positives, exclude = _tensors()
    rows = [None, CANDIDATES[1], None]
    flagged = Candidates.from_lists(rows, len(POOL))
    listed = Candidates.from_lists([range(len(POOL)) if r is None else r for r in rows], len(POOL))
    assert flagged.items.numel() == len(set(CANDIDATES[1])) and flagged.sizes().tolist() == [6, 4, 6]
    assert torch.equal(flagged.mask(0, 3), listed.mask(0, 3))
    assert flagged.contains(torch.tensor([5, 0, -1])).tolist() == [True, False, False]
    for a, b in zip(coir_kernels.candidate_rank_counts(q, pool, flagged, positives, exclude),
                    coir_kernels.candidate_rank_counts(q, pool, listed, positives, exclude)):
        assert torch.equal(a.nan_to_num(-7), b.nan_to_num(-7))
