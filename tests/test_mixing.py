"""The mixed-embedding extension (harness/mixing/): a sweep entry equals a direct
evaluation of the explicitly mixed query, learned weights stay on the simplex, the
median and max rules match numpy, and a run with --mix writes the table and the
heat-map, tuned on one set and reported on another."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from harness.core.errors import HarnessError
from harness.evaluation.embed import SplitEmbeddings
from harness.evaluation.metrics import CIRR_METRICS, build_labels, cirr_metrics
from harness.evaluation.protocols import ScoringRules
from harness.mixing import learn, modes, parts, sweep
from harness.mixing.adapters import MIXERS
from harness.mixing.adapters.base import unmerged
from harness.mixing.grid import aggregate, mix, simplex_grid
from harness.suites.base import Query, SplitData
from harness.training.losses import hn_nce, info_nce

TRIPLES = [(0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.2, 0.3, 0.5),
           (0.05, 0.05, 0.9), (1 / 3, 1 / 3, 1 / 3), (0.6, 0.0, 0.4)]


def random_split(num_queries=48, num_gallery=70, dim=16, seed=0):
    """Queries with a reference, a hard target, a soft target and a 6-member image set,
    and random (q, t, f, gallery) embeddings; f leans towards the target so ranks vary."""
    rng = np.random.default_rng(seed)
    ids = [f"g{i}" for i in range(num_gallery)]
    queries = []
    for i in range(num_queries):
        members = [ids[j] for j in rng.choice(num_gallery, 6, replace=False)]
        reference, target, soft = members[0], members[1], members[2]
        queries.append(Query(pair_id=1000 + i, reference=reference, caption="c", target=target,
                             target_soft={target: 1.0, soft: 0.5}, members=tuple(members)))
    gallery = torch.tensor(rng.normal(size=(num_gallery, dim)), dtype=torch.float32)
    index = {g: i for i, g in enumerate(ids)}
    targets = gallery[[index[q.target] for q in queries]]
    parts = [torch.tensor(rng.normal(size=(num_queries, dim)), dtype=torch.float32) for _ in range(3)]
    parts[2] = parts[2] + 1.5 * targets  # f: informative
    parts[0] = parts[0] + 0.7 * targets  # q: a little
    data = SplitData("random", "val", queries, ids, {}, True, "")
    return data, SplitEmbeddings(ids, gallery, parts[2], parts[0], parts[1])


def test_simplex_grid_has_231_triples_on_the_simplex():
    grid = simplex_grid(0.05)
    assert grid.shape == (231, 3)
    assert torch.all(grid >= 0) and torch.allclose(grid.sum(1), torch.ones(231))
    assert len({tuple(row) for row in grid.tolist()}) == 231
    for vertex in ([1, 0, 0], [0, 1, 0], [0, 0, 1]):
        assert vertex in grid.tolist()
    assert simplex_grid(0.25).shape == (15, 3)
    with pytest.raises(HarnessError):
        simplex_grid(0.3)


@pytest.mark.parametrize("convention", ["covr", "cirplant"])
@pytest.mark.parametrize("tie_rule", ["pessimistic", "optimistic"])
def test_sweep_entry_equals_direct_evaluation(convention, tie_rule):
    data, emb = random_split()
    part = parts.make_part("evaluation", data, emb, unmerged)
    weights = torch.tensor(TRIPLES)
    rules = ScoringRules(convention=convention, tie_rule=tie_rule)
    swept = sweep.sweep_metrics(part, weights, MIXERS.get("cirr"), rules, chunk=3)  # chunks of 3 triples
    labels = build_labels(data.queries, {g: i for i, g in enumerate(emb.gallery_ids)})
    for i, w in enumerate(TRIPLES):
        # Explicitly: normalise each part, mix, normalise m, score with the normal path against
        # the gallery as the protocol scores it (not unit length here: the sweep must not normalise it).
        q, t, f = (torch.nn.functional.normalize(p, dim=-1) for p in (emb.image, emb.text, emb.composed))
        m = torch.nn.functional.normalize(w[0] * q + w[1] * t + w[2] * f, dim=-1)
        direct = cirr_metrics(m, emb.gallery, labels, convention, tie_rule)
        assert {k: swept[k][i] for k in direct} == direct, w
    # The sweep really varies: f alone beats q alone here.
    assert swept["R@1"][0] > swept["R@1"][1]


def test_sweep_over_the_grid_matches_direct_on_sampled_triples():
    data, emb = random_split(num_queries=30, seed=3)
    part = parts.make_part("evaluation", data, emb, unmerged)
    grid = simplex_grid(0.05)
    mixer, rules = MIXERS.get("cirr"), ScoringRules()
    swept = sweep.sweep_metrics(part, grid, mixer, rules)
    for i in (0, 17, 100, 230):
        direct = sweep.direct_metrics(part, mix(part.parts, grid[i].tolist()), mixer, rules)
        assert {k: swept[k][i] for k in direct} == direct


@pytest.mark.parametrize("loss", [info_nce, hn_nce])
def test_learned_weights_stay_on_the_simplex_and_favour_the_informative_part(loss):
    data, emb = random_split(num_queries=64)
    part = parts.make_part("tuning", data, emb, unmerged)
    learned = learn.learn_weights(part, loss, seed=0, steps=60)
    w = torch.tensor(learned["weights"])
    assert torch.all(w >= 0) and w.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert int(w.argmax()) == 2  # f carries the target most strongly
    assert learned["loss_last"] < learned["loss_first"]


@pytest.mark.parametrize("rule, numpy_rule", [("median", np.median), ("max", np.max)])
def test_aggregation_rules_match_numpy(rule, numpy_rule):
    rng = np.random.default_rng(1)
    parts = [rng.normal(size=(9, 5)).astype(np.float32) for _ in range(3)]
    normalised = [p / np.linalg.norm(p, axis=1, keepdims=True) for p in parts]
    expected = numpy_rule(np.stack(normalised), axis=0)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    got = aggregate([torch.from_numpy(p) for p in parts], rule).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_heldout_halves_are_disjoint_seeded_and_cover_the_split():
    data, _ = random_split(num_queries=41)
    tune, ev = parts.heldout_halves(data, seed=0)
    assert len(tune) == 20 and len(ev) == 21 and not set(tune) & set(ev)
    assert sorted(tune + ev) == list(range(41))
    assert parts.heldout_halves(data, seed=0) == (tune, ev)
    assert parts.heldout_halves(data, seed=1) != (tune, ev)


@pytest.mark.parametrize("tokens, ok", [(["sweep", "learn", "0.2,0.3,0.5"], True), (["0.5,0.5,0.5"], False),
                                         (["mean"], False), (["1,0"], False), (["-0.1,0.6,0.5"], False)])
def test_mix_modes_are_checked(tokens, ok):
    if ok:
        assert modes.parse_modes(tokens) == tuple(tokens)
    else:
        with pytest.raises(HarnessError):
            modes.parse_modes(tokens)


def test_multi_vector_backbones_are_refused():
    from harness.config import RunConfig

    config = RunConfig.resolve({"backbone": "blip2", "mix": ["sweep"], "train": False})
    suite = type("S", (), {"scoring": "cirr", "splits": ("train", "val")})()
    backbone = type("B", (), {"multi_vector": True})()
    with pytest.raises(HarnessError, match="multi-vector"):
        modes.check(config.mixing(), suite, SplitData("cirr", "val", [], [], {}, True, ""), backbone)


def test_run_with_mix_tunes_on_one_half_reports_on_the_other(tmp_path):
    """The pipeline with every mode on a small generated shapes split (random tiny model)."""
    from backbones.blip_tiny import build_random
    from harness.config import RunConfig
    from harness.pipeline import run
    from harness.reports.benchmarks import benchmarks_markdown, load_results
    from harness.suites.shapes import ensure_dataset
    from harness.suites.shapes_generator import ShapesSpec

    ensure_dataset(tmp_path / "shapes", ShapesSpec(seed=2, image_size=32, sets={"train": 4, "val": 15, "test1": 2},
                                                   queries_per_set={"train": 2, "val": 2, "test1": 2}))
    build_random(seed=5).save(tmp_path / "ckpt")
    config = RunConfig.resolve({"data_root": str(tmp_path / "shapes"), "checkpoint": str(tmp_path / "ckpt"),
                                "train": False, "cache": False, "out": str(tmp_path / "out"), "mix_step": 0.25,
                                "mix": ["sweep", "learn", "median", "max", "0.2,0.2,0.6"]})
    result = run(config, argv=["(mixing test)"])
    block = result["mixing"]
    assert block["tuning"]["queries"] + block["evaluation"]["queries"] == result["protocol"]["queries"]
    assert block["tuning"]["pair_ids_sha256"] != block["evaluation"]["pair_ids_sha256"]
    methods = [r["method"] for r in block["rows"]]
    assert methods[:3] == ["f alone", "q alone", "t alone"]
    assert {"element-wise median", "element-wise max", "fixed 0.2,0.2,0.6"} <= set(methods)
    assert sum(1 for r in block["rows"] if r.get("chosen_for")) == len(CIRR_METRICS)
    assert block["sweep"]["triples"] == 15
    assert abs(sum(block["learned"]["weights"]) - 1) < 1e-6
    png = tmp_path / "out" / block["heatmap"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the sweep's entries equal the rows evaluated directly on the same set
    for row in block["rows"]:
        if row.get("chosen_for"):
            i = row["sweep_index"]
            assert {m: block["sweep"]["evaluation"][m][i] for m in CIRR_METRICS} == pytest.approx(row["metrics"])
    text = benchmarks_markdown(load_results([tmp_path / "out"]))
    assert "Mixed embeddings" in text and block["heatmap"] in text
    saved = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert saved["mixing"]["rows"] == block["rows"]


def test_tune_split_train_reports_on_the_whole_split(tmp_path):
    from backbones.blip_tiny import build_random
    from harness.config import RunConfig
    from harness.pipeline import run
    from harness.suites.shapes import ensure_dataset
    from harness.suites.shapes_generator import ShapesSpec

    ensure_dataset(tmp_path / "shapes", ShapesSpec(seed=2, image_size=32, sets={"train": 6, "val": 5, "test1": 2},
                                                   queries_per_set={"train": 3, "val": 2, "test1": 2}))
    build_random(seed=5).save(tmp_path / "ckpt")
    config = RunConfig.resolve({"data_root": str(tmp_path / "shapes"), "checkpoint": str(tmp_path / "ckpt"),
                                "train": False, "out": str(tmp_path / "out"), "mix": ["0.1,0.1,0.8"],
                                "tune_split": "train", "tune_max_queries": 10})
    block = run(config, argv=["(mixing test)"])["mixing"]
    assert block["tuning"]["split"] == "train-sample10-seed0" and block["tuning"]["queries"] == 10
    assert block["evaluation"]["queries"] == 10 and block["evaluation"]["rule"] == "the whole split"


@pytest.mark.slow
def test_sweep_on_real_cirr_val_matches_direct_evaluation(cirr_root):
    """All 231 triples over the 4,181 real CIRR val queries (soft labels, image sets,
    the 37 hard targets outside target_soft) in one sweep; sampled entries equal the
    direct evaluation. Timings of this sweep: python -m harness.mix_timing."""
    from backbones.blip_tiny import build_random
    from harness.evaluation.embed import embed_split
    from harness.suites.cirr import CirrSuite

    data = CirrSuite(cirr_root).load("val")
    emb = embed_split(build_random(seed=0), data, torch.device("cpu"), "fp32", 512)
    part = parts.make_part("evaluation", data, emb, unmerged)
    grid = simplex_grid(0.05)
    mixer, rules = MIXERS.get("cirr"), ScoringRules()
    swept = sweep.sweep_metrics(part, grid, mixer, rules)
    assert len(part.pair_ids) == 4181 and all(len(v) == 231 for v in swept.values())
    for i in (0, 57, 230):  # t alone, a mixture, f alone
        direct = sweep.direct_metrics(part, mix(part.parts, grid[i].tolist()), mixer, rules)
        assert {k: swept[k][i] for k in direct} == pytest.approx(direct, abs=1e-9)
