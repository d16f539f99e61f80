"""Mixing under every protocol (harness/mixing/adapters): a sweep entry is what the
protocol's own `evaluate` and `query_values` give for that triple's mixed query on
the same half, "f alone" is the protocol's composed figure on that half (from the
raw, unnormalised embeddings), FashionIQ's per-category sweep equals a hand
computation in numpy, and the gallery is scored as the protocol scores it (not
re-normalised)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.evaluation.embed import COMPOSED, SplitEmbeddings
from harness.evaluation.protocols import PROTOCOLS, ScoringRules
from harness.evaluation.query_subset import query_subset
from harness.mixing import learn
from harness.mixing.adapters import MIXERS
from harness.mixing.grid import mix
from harness.mixing.parts import heldout_halves, make_part
from harness.suites.base import Query, SplitData

TRIPLES = [(0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.2, 0.3, 0.5), (0.6, 0.0, 0.4), (0.1, 0.45, 0.45)]
F, Q, T = 0, 1, 2  # rows of TRIPLES: f alone, q alone, t alone
BASELINES = {F: COMPOSED, Q: "image-only q", T: "text-only t"}
RULES = ScoringRules()


def embeddings(rng, gallery_ids, queries, dim, target_of):
    """A gallery of rows with unequal norms (as token means have) and (q, t, f) of
    unequal norms, f leaning towards each query's target, q a little."""
    index = {g: i for i, g in enumerate(gallery_ids)}
    gallery = rng.normal(size=(len(gallery_ids), dim)) * rng.uniform(0.3, 1.0, size=(len(gallery_ids), 1))
    targets = gallery[[index[target_of(q)] for q in queries]]
    q, t, f = (rng.normal(size=(len(queries), dim)) for _ in range(3))
    f, q = f + 1.5 * targets, q + 0.6 * targets
    scale = rng.uniform(0.5, 2.0, size=(3, len(queries), 1))
    q, t, f = (torch.tensor(p * s, dtype=torch.float32) for p, s in zip((q, t, f), scale))
    return SplitEmbeddings(list(gallery_ids), torch.tensor(gallery, dtype=torch.float32), f, q, t)


def fashioniq_split(seed=0, phrasings=1, sizes=(("dress", 14, 80), ("shirt", 11, 70)), dim=12):
    rng = np.random.default_rng(seed)
    groups, queries = {}, []
    for category, num_queries, num_images in sizes:
        groups[category] = [f"{category}{i}" for i in range(num_images)]
        for _ in range(num_queries):
            reference, target = rng.choice(num_images, 2, replace=False)
            pair_id = len({q.pair_id for q in queries})
            queries += [Query(pair_id, f"{category}{reference}", f"c{n}", f"{category}{target}", group=category)
                        for n in range(phrasings)]
    gallery_ids = [g for ids in groups.values() for g in ids]
    data = SplitData("fashioniq", "val", queries, gallery_ids, {}, True, "", groups=groups)
    return data, embeddings(rng, gallery_ids, queries, dim, lambda q: q.target)


def circo_split(seed=0, num_queries=30, num_images=90, dim=12):
    """Queries with 1 to 4 ground truths (target first); query 0's two ground truths
    are copies of one image (identical rows: a tie the kernels settle as one item)."""
    rng = np.random.default_rng(seed)
    ids = [str(100 + i) for i in range(num_images)]
    queries = []
    for i in range(num_queries):
        chosen = [ids[j] for j in rng.choice(num_images, 5, replace=False)]
        queries.append(Query(i, chosen[0], "c", chosen[1], ground_truths=tuple(chosen[1 : 2 + i % 4])))
    queries[0] = Query(0, ids[0], "c", ids[1], ground_truths=(ids[1], ids[2]))
    data = SplitData("circo", "val", queries, ids, {}, True, "")
    emb = embeddings(rng, ids, queries, dim, lambda q: q.target)
    emb.gallery[2] = emb.gallery[1]
    return data, emb


def webvid_split(seed=0, num_queries=30, dim=12):
    """Query frames whose reference video is one of the gallery's target videos."""
    rng = np.random.default_rng(seed)
    videos = [f"v{i}" for i in range(num_queries + 10)]
    queries = [Query(i, f"frame{i}", "c", videos[i], reference_item=videos[(i + 7) % len(videos)])
               for i in range(num_queries)]
    data = SplitData("webvid-covr", "test", queries, videos, {}, True, "")
    return data, embeddings(rng, videos, queries, dim, lambda q: q.target)


SPLITS = {"fashioniq": fashioniq_split, "circo": circo_split, "webvid": webvid_split}


@pytest.mark.parametrize("scoring, options", [("fashioniq", {}), ("fashioniq", {"phrasings": 2}),
                                              ("circo", {}), ("webvid", {})])
def test_sweep_entries_are_the_protocols_figures_on_each_half(scoring, options):
    data, emb = SPLITS[scoring](**options)
    mixer, protocol = MIXERS.get(scoring), PROTOCOLS.get(scoring)
    tune_rows, eval_rows = heldout_halves(data, seed=0)
    tuned = {data.queries[i].pair_id for i in tune_rows}
    assert not tuned & {data.queries[i].pair_id for i in eval_rows}  # phrasings stay together
    for rows in (tune_rows, eval_rows):
        part = make_part("half", data, emb, mixer.merge, rows)
        metrics, values = mixer.sweep(part, torch.tensor(TRIPLES), RULES)
        for i, weights in enumerate(TRIPLES):
            mixed = part.embeddings(mix(part.parts, weights))
            assert {m: v[i] for m, v in metrics.items()} == protocol.evaluate(part.data, mixed, RULES)[COMPOSED]
            for name, direct in protocol.query_values(part.data, mixed, RULES)[COMPOSED].items():
                assert torch.equal(values[name][i], direct), (weights, name)
        # f, q and t alone are the protocol's three rows on that half, from the raw embeddings
        raw = protocol.evaluate(*query_subset(data, emb, rows), RULES)
        for i, method in BASELINES.items():
            assert {m: v[i] for m, v in metrics.items()} == raw[method], method
    assert any(v[F] != v[T] for v in metrics.values())  # the triples differ


def numpy_fashioniq(data, emb, weights):
    """FashionIQ's metrics of the mixed query by hand (float64): each part normalised,
    mixed, scored against its category's gallery as given, the reference removed."""
    index = {g: i for i, g in enumerate(data.gallery)}
    gallery = emb.gallery.double().numpy()
    parts = [p.double().numpy() / np.linalg.norm(p.double().numpy(), axis=1, keepdims=True)
             for p in (emb.image, emb.text, emb.composed)]
    mixed = sum(w * p for w, p in zip(weights, parts))
    metrics, gaps = {}, []
    for category, ids in data.groups.items():
        ranks = []
        for i, q in enumerate(data.queries):
            if q.group != category:
                continue
            scores = {g: mixed[i] @ gallery[index[g]] for g in ids if g != q.reference}
            target = scores.pop(q.target)
            ranks.append(sum(s > target for s in scores.values()))
            gaps.append(min(abs(s - target) for s in scores.values()))
        for k in (10, 50):
            metrics[f"{category} R@{k}"] = 100 * np.mean(np.array(ranks) < k)
    for k in (10, 50):
        metrics[f"avg R@{k}"] = np.mean([metrics[f"{c} R@{k}"] for c in data.groups])
    metrics["Avg"] = (metrics["avg R@10"] + metrics["avg R@50"]) / 2
    return metrics, min(gaps)


def test_fashioniq_per_category_sweep_equals_numpy():
    for seed in range(20):  # a problem clear of near-ties (fp32 scores differ from float64 by ~1e-7)
        data, emb = fashioniq_split(seed=seed)
        expected = [numpy_fashioniq(data, emb, w) for w in TRIPLES]
        if min(gap for _, gap in expected) > 1e-5:
            break
    mixer = MIXERS.get("fashioniq")
    metrics, _ = mixer.sweep(make_part("all", data, emb, mixer.merge), torch.tensor(TRIPLES), RULES)
    assert list(metrics) == list(expected[0][0])
    for i, (by_hand, _) in enumerate(expected):
        assert {m: v[i] for m, v in metrics.items()} == pytest.approx(by_hand, abs=1e-9), TRIPLES[i]
    assert len({tuple(v) for v in metrics.values()}) > 2  # categories and triples differ


def test_the_gallery_is_scored_as_given_not_renormalised():
    """Under mean token pooling the gallery's norms are part of every score: re-
    normalising it (what the sweep did before) ranks differently here, the sweep does not."""
    data, emb = circo_split(seed=1)
    mixer = MIXERS.get("circo")
    part = make_part("all", data, emb, mixer.merge)
    metrics, _ = mixer.sweep(part, torch.tensor(TRIPLES[:1]), RULES)
    unit = SplitEmbeddings(emb.gallery_ids, torch.nn.functional.normalize(emb.gallery, dim=-1), emb.composed, None, None)
    as_given = PROTOCOLS.get("circo").evaluate(data, emb, RULES)[COMPOSED]
    assert {m: v[0] for m, v in metrics.items()} == as_given
    assert PROTOCOLS.get("circo").evaluate(data, unit, RULES)[COMPOSED] != as_given


@pytest.mark.parametrize("scoring", ["fashioniq", "circo"])
def test_learn_fits_each_query_against_its_annotated_target(scoring):
    data, emb = SPLITS[scoring](num_queries=60) if scoring == "circo" else SPLITS[scoring](
        sizes=(("dress", 30, 60), ("shirt", 30, 60)))
    mixer = MIXERS.get(scoring)
    part = make_part("tuning", data, emb, mixer.merge)
    rows, targets = learn.target_rows(part)
    index = {g: i for i, g in enumerate(data.gallery)}
    assert targets.tolist() == [index[part.data.queries[i].target] for i in rows.tolist()] and len(rows) == 60
    learned = learn.learn_weights(part, lambda m, t: torch.nn.functional.cross_entropy(
        m @ t.T / 0.05, torch.arange(len(m))), seed=0, steps=60)
    assert int(torch.tensor(learned["weights"]).argmax()) == 2 and learned["loss_last"] < learned["loss_first"]
