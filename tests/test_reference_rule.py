"""--reference: remove (CoVR), keep (CLIP4Cir, SPRC, SEARLE, MagicLens, mteb) and
covr-order (CoVR's WebVid-CoVR mask on a CSV not sorted by pth2), checked against
plain computations (harness/evaluation/reference_rule.py)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from harness.core.errors import HarnessError
from harness.evaluation.embed import SplitEmbeddings
from harness.evaluation.protocols import PROTOCOLS, ScoringRules, resolved
from harness.evaluation.reference_rule import covr_order_masked
from harness.reports.run import paper_differences, run_summary
from harness.score import score_embeddings
from harness.suites import SUITES, Query, SplitData


def _one_hot(ids: list[str]) -> dict[str, np.ndarray]:
    eye = np.eye(len(ids), dtype=np.float32)
    return {g: eye[i] for i, g in enumerate(ids)}


def _score(suite: str, data, composed, out, reference: str) -> dict:
    vectors = _one_hot(data.gallery)
    return score_embeddings(suite, data.split, data.gallery, np.stack([vectors[g] for g in data.gallery]),
                            [q.pair_id for q in data.queries], composed, out=str(out), normalize=True,
                            rules=ScoringRules(reference=reference))


def _records(result: dict, out) -> list[dict]:
    return [json.loads(line) for line in (out / result["per_query_file"]).read_text().splitlines()]


def test_keep_on_fashioniq_puts_a_planted_reference_before_the_target(tmp_path):
    """Each query scores its reference 3, nine other images of its category 2 and its
    target 1: with the reference removed the target is 10th (a hit at R@10), kept it is
    11th (a miss)."""
    data = SUITES.get("fashioniq")(None).load("val")
    vectors = _one_hot(data.gallery)
    composed, planted = [], []
    for q in data.queries:
        others = [g for g in data.groups[q.group] if g not in (q.reference, q.target)][:9]
        composed.append(3 * vectors[q.reference] + 2 * sum(vectors[g] for g in others) + vectors[q.target])
        planted.append(q.reference in data.groups[q.group])
    assert sum(planted) == len(planted)  # the generated references are in their category's gallery
    removed = _score("fashioniq", data, np.stack(composed), tmp_path / "remove", "remove")
    kept = _score("fashioniq", data, np.stack(composed), tmp_path / "keep", "keep")
    assert removed["metrics"]["composed f(q,t)"]["avg R@10"] == 100.0
    assert kept["metrics"]["composed f(q,t)"]["avg R@10"] == 0.0
    assert {r["methods"]["composed f(q,t)"]["target_rank"] for r in _records(kept, tmp_path / "keep")} == {11}
    assert removed["protocol"]["reference_removed"] is True and kept["protocol"]["reference_removed"] is False
    assert kept["protocol"]["fingerprint"]["reference_removed"] is False
    assert "reference kept in its ranking" in run_summary(kept)
    assert any("reference_removed: false vs true" in line for line in paper_differences(kept))


def test_keep_on_circo_lowers_map_where_the_reference_ranks_first(tmp_path):
    data = SUITES.get("circo")(None).load("val")
    vectors = _one_hot(data.gallery)
    composed = np.stack([2 * vectors[q.reference] + sum(vectors[g] for g in q.ground_truths) for q in data.queries])
    removed = _score("circo", data, composed, tmp_path / "remove", "remove")["metrics"]["composed f(q,t)"]
    kept = _score("circo", data, composed, tmp_path / "keep", "keep")["metrics"]["composed f(q,t)"]
    assert removed["mAP@5"] == 100.0 and removed["R@5"] == 100.0
    assert kept["mAP@5"] < removed["mAP@5"] and kept["R@5"] == 100.0  # the target is 2nd to its reference


def test_cirr_takes_only_remove():
    with pytest.raises(HarnessError, match="takes remove"):
        resolved(ScoringRules(reference="keep"), PROTOCOLS.get("cirr"))
    with pytest.raises(HarnessError, match="covr-order"):
        resolved(ScoringRules(reference="covr-order"), PROTOCOLS.get("circo"))


# -- covr-order: CoVR's own WebVid-CoVR evaluation, re-traced in plain Python ----------
def covr_printed_recalls(rows: list[tuple[str, str]], query_of: dict, target_of: dict) -> dict[str, float]:
    """What lucas-ventura/CoVR prints for rows (pth1, pth2) in file order: the query
    order from the unique pth2 in file order (src/data/webvid_covr.py line 260), the
    masks from the frame sorted by pth2 (lines 264-279), -10 where the sorted row i's
    reference equals the sorted row j's target (src/test/blip/webvid_covr.py lines
    96-100), ranks by argsort (eval_recall)."""
    order = list(dict.fromkeys(pth2 for _, pth2 in rows))
    by_pth2 = sorted(rows, key=lambda r: r[1])
    sims = np.stack([query_of[t] for t in order]) @ np.stack([target_of[t] for t in order]).T
    for i in range(len(order)):
        for j in range(len(order)):
            if by_pth2[i][0] == by_pth2[j][1]:
                sims[i][j] = -10
    ranks = np.array([np.where(np.argsort(s)[::-1] == i)[0][0] for i, s in enumerate(sims)])
    return {f"R@{k}": 100.0 * len(np.where(ranks < k)[0]) / len(ranks) for k in (1, 5, 10, 50)}


def _webvid_problem(shuffled: bool, n: int = 60, seed: int = 0):
    """Rows whose reference video is another row's target, composed queries closer to
    their reference than to their target: where the mask lands decides the ranks."""
    rng = np.random.default_rng(seed)
    videos = [f"{1000 + i}/{2000 + i}" for i in range(n)]
    rows = [(videos[(i + 1) % n], videos[i]) for i in range(n)]  # (pth1, pth2)
    if shuffled:
        random.Random(seed).shuffle(rows)
    target_of = {v: e for v, e in zip(videos, np.eye(n, dtype=np.float64) + 0.01 * rng.random((n, n)))}
    query_of = {pth2: 1.0 * target_of[pth2] + 1.5 * target_of[pth1] + 0.05 * rng.random(n) for pth1, pth2 in rows}
    queries = [Query(i, f"{pth1}#0", "edit", pth2, reference_item=pth1) for i, (pth1, pth2) in enumerate(rows)]
    gallery = [pth2 for _, pth2 in rows]
    data = SplitData("webvid-covr", "test", queries, gallery, {}, True, "", {})
    emb = SplitEmbeddings(gallery, torch.tensor(np.stack([target_of[g] for g in gallery]), dtype=torch.float32),
                          torch.tensor(np.stack([query_of[t] for t in gallery]), dtype=torch.float32), None, None)
    return rows, query_of, target_of, data, emb


def _webvid_metrics(data, emb, reference: str) -> dict[str, float]:
    metrics = PROTOCOLS.get("webvid").evaluate(data, emb, ScoringRules(reference=reference))["composed f(q,t)"]
    return {k: metrics[k] for k in ("R@1", "R@5", "R@10", "R@50")}


def test_covr_order_reproduces_covrs_printed_numbers_on_a_shuffled_csv():
    rows, query_of, target_of, data, emb = _webvid_problem(shuffled=True)
    printed = covr_printed_recalls(rows, query_of, target_of)
    assert _webvid_metrics(data, emb, "covr-order") == printed
    removed = _webvid_metrics(data, emb, "remove")
    assert removed["R@1"] == 100.0 and printed["R@1"] < removed["R@1"]  # CoVR's mask misses the reference
    masked = covr_order_masked(data.queries)
    assert sum(m == q.reference_item for m, q in zip(masked, data.queries)) < len(rows) // 2


def test_covr_order_is_remove_on_a_csv_sorted_by_pth2():
    rows, query_of, target_of, data, emb = _webvid_problem(shuffled=False)
    assert [pth2 for _, pth2 in rows] == sorted(pth2 for _, pth2 in rows)
    assert _webvid_metrics(data, emb, "covr-order") == _webvid_metrics(data, emb, "remove")
    assert _webvid_metrics(data, emb, "remove") == covr_printed_recalls(rows, query_of, target_of)


def test_covr_order_needs_one_row_per_target():
    queries = [Query(0, "a/1#0", "x", "b/2", reference_item="a/1"), Query(1, "c/3#0", "y", "b/2", reference_item="c/3")]
    with pytest.raises(HarnessError, match="one row per"):
        covr_order_masked(queries)
