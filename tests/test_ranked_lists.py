"""Top-K lists ordered by the tie rule (harness/evaluation/ranked_lists.py): an
official evaluator scoring the harness's own list gives the harness's own figure,
exact ties between a ground truth and other images included."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from harness.evaluation.embed import SplitEmbeddings
from harness.evaluation.protocols import PROTOCOLS, ScoringRules
from harness.evaluation.ranked_lists import distinct_labels, tie_ordered_top
from harness.suites import Query, SplitData


def circo_official_metrics(predictions: dict, queries: list[Query], ks=(5, 10, 25, 50)) -> dict[str, float]:
    """CIRCO's compute_metrics (miccunifi/CIRCO src/evaluation.py; CoVR's copy in
    src/test/blip2/circo.py lines 148-199), unrounded, on the harness's file."""
    aps = {k: [] for k in ks}
    recalls = {k: [] for k in ks}
    for q in queries:
        predicted = np.array(predictions[str(q.pair_id)], dtype=int)
        gts = [int(g) for g in q.ground_truths]
        hits = np.isin(predicted, gts)
        precisions = np.cumsum(hits, axis=0) * hits / np.arange(1, len(hits) + 1)
        for k in ks:
            aps[k].append(float(np.sum(precisions[:k]) / min(len(gts), k)))
            recalls[k].append(float(np.sum(predicted[:k] == int(q.target))))
    return {**{f"mAP@{k}": float(np.mean(aps[k])) * 100 for k in ks},
            **{f"R@{k}": float(np.mean(recalls[k])) * 100 for k in ks}}


def tied_circo_problem(seed: int = 0, gallery_size: int = 80, num_queries: int = 30):
    """Integer vectors (exact scores on any machine) over a few values, so many images
    tie with a ground truth; every third ground truth also has an exact copy."""
    rng = np.random.default_rng(seed)
    ids = [str(100 + i) for i in range(gallery_size)]
    gallery = rng.integers(0, 3, size=(gallery_size, 4)).astype(np.float32)
    queries, composed = [], []
    for i in range(num_queries):
        picks = rng.choice(gallery_size, size=4, replace=False)
        reference, truths = ids[picks[0]], [ids[p] for p in picks[1:]]
        queries.append(Query(i, reference, "caption", truths[0], ground_truths=tuple(truths)))
        composed.append(rng.integers(0, 3, size=4))
        if i % 3 == 0:
            gallery[(picks[1] + 1) % gallery_size] = gallery[picks[1]]  # a copy of the target
    data = SplitData("circo", "val", queries, ids, {}, True, "", {})
    emb = SplitEmbeddings(ids, torch.tensor(gallery), torch.tensor(np.stack(composed), dtype=torch.float32),
                          None, None)
    return data, emb


def pessimistic_order(data, emb, q_index: int) -> list[str]:
    """The ranking by score, then non-ground truths before ground truths, ground
    truths in reverse annotation order (the target last), then gallery order."""
    q = data.queries[q_index]
    scores = (emb.gallery @ emb.composed[q_index]).tolist()
    rank_of = {g: j for j, g in enumerate(q.ground_truths)}
    keyed = [(-s, g in rank_of, -rank_of.get(g, 0), i) for i, (g, s) in enumerate(zip(data.gallery, scores))
             if g != q.reference]
    return [data.gallery[k[-1]] for k in sorted(keyed)]


@pytest.mark.parametrize("tie_rule", ["pessimistic", "optimistic"])
def test_circo_val_file_scores_to_the_harness_figure(tmp_path, tie_rule):
    data, emb = tied_circo_problem()
    protocol, rules = PROTOCOLS.get("circo"), ScoringRules(tie_rule=tie_rule)
    metrics = protocol.evaluate(data, emb, rules)["composed f(q,t)"]
    files = protocol.write_server_files(data, emb, rules, tmp_path, "run")
    predictions = json.loads(open(files["circo_val"]).read())
    official = circo_official_metrics(predictions, data.queries)
    assert official == pytest.approx(metrics, abs=1e-9)
    if tie_rule == "pessimistic":
        for i, q in enumerate(data.queries):
            assert [str(g) for g in predictions[str(q.pair_id)]] == pessimistic_order(data, emb, i)[:50]


def test_the_tie_rule_moves_the_figure_on_this_problem(tmp_path):
    """The problem has ties that matter: pessimistic and optimistic differ."""
    data, emb = tied_circo_problem()
    protocol = PROTOCOLS.get("circo")
    low = protocol.evaluate(data, emb, ScoringRules(tie_rule="pessimistic"))["composed f(q,t)"]
    high = protocol.evaluate(data, emb, ScoringRules(tie_rule="optimistic"))["composed f(q,t)"]
    assert low["mAP@5"] < high["mAP@5"]


def test_per_query_top_lists_put_the_target_at_its_rank():
    """CIRR-protocol records: wherever the target's rank is within the list, the list has
    it there (ties with other images included)."""
    data, emb = tied_circo_problem()
    cirr_like = SplitData("shapes", "val", [Query(q.pair_id, q.reference, q.caption, q.target) for q in data.queries],
                          data.gallery, {}, True, "", {})
    # each query is its target's own vector: the target is near the top, tied with many
    emb = replace(emb, composed=emb.gallery[[data.gallery.index(q.target) for q in data.queries]])
    for tie_rule in ("pessimistic", "optimistic"):
        records = PROTOCOLS.get("cirr").query_records(cirr_like, emb, ScoringRules(tie_rule=tie_rule))
        shown = [r["methods"]["composed f(q,t)"] for r in records]
        placed = [m for m in shown if m["target_rank"] <= len(m["top"])]
        assert len(placed) >= 5
        assert all(m["top"][m["target_rank"] - 1] == r["target"] for r, m in zip(records, shown)
                   if m["target_rank"] <= len(m["top"]))


def test_tie_ordered_top_on_a_hand_made_tie():
    """Items 0, 1, 2 score the same; item 1 is the positive: pessimistic lists it last of
    the three, optimistic first; the gallery-order list would put it second."""
    gallery = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.0]])
    query = torch.tensor([[1.0, 1.0]])
    positives, labels, exclude = torch.tensor([[1]]), torch.tensor([[1.0]]), torch.tensor([-1])
    _, pessimistic = tie_ordered_top(query, gallery, 3, exclude, positives, labels, "pessimistic")
    _, optimistic = tie_ordered_top(query, gallery, 3, exclude, positives, labels, "optimistic")
    assert pessimistic.tolist() == [[0, 2, 1]] and optimistic.tolist() == [[1, 0, 2]]


def test_distinct_labels_keep_order_and_break_equal_labels_by_column():
    labels = torch.tensor([[0.5, 1.0, 0.5, 0.0]], dtype=torch.float64)
    real = torch.tensor([[True, True, True, False]])
    assert distinct_labels(labels, real).tolist() == [[2.0, 4.0, 3.0, 0.0]]
