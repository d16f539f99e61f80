"""Bootstrap intervals over queries (harness/evaluation/intervals.py), each
protocol's per-query values against its metrics, and --seeds' one results file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from harness.evaluation import intervals


def test_bootstrap_matches_plain_numpy_resampling():
    """The same resampled indices, numpy's mean and percentile: the same interval."""
    values = torch.tensor([1, 0, 0, 1, 1, 0, 1, 0, 0, 0, 1, 1, 0.5, 0, 1], dtype=torch.float64)
    got = intervals.bootstrap({"R@1": values})["R@1"]
    index = intervals.resample_indices(len(values)).numpy()
    means = 100.0 * values.numpy()[index].mean(axis=1)
    expected = np.percentile(means, [2.5, 97.5])  # numpy's default: linear interpolation, as torch.quantile
    assert got == pytest.approx(expected.tolist(), abs=1e-9)
    assert got[0] < 100.0 * values.mean().item() < got[1]


def test_indices_are_seeded_and_the_same_on_any_machine():
    first = intervals.resample_indices(7, resamples=3)
    assert torch.equal(first, intervals.resample_indices(7, resamples=3))
    assert not torch.equal(first, intervals.resample_indices(7, resamples=3, seed=1))


def test_interval_narrows_as_queries_grow():
    """Same hit rate (30%), 4x the queries: about half the width (1 / sqrt(Q))."""
    widths = []
    for q in (100, 400, 1600):
        values = (torch.arange(q) % 10 < 3).double()
        low, high = intervals.bootstrap({"R@1": values})["R@1"]
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    assert 1.6 < widths[0] / widths[1] < 2.5 and 1.6 < widths[1] / widths[2] < 2.5


def test_paired_interval_cancels_what_two_methods_share():
    """b is a with 20 of 400 queries flipped to hits: the paired interval of a - b sits
    just below 0 and is much narrower than either method's own interval."""
    a = (torch.arange(400) % 2 == 0).double()
    b = a.clone()
    b[1:40:2] = 1.0
    result = intervals.paired({"R@1": b}, {"R@1": a})["R@1"]
    assert result["difference"] == pytest.approx(5.0)
    low, high = result["interval"]
    own = intervals.bootstrap({"R@1": a})["R@1"]
    assert 0 < low < 5 < high and (high - low) < (own[1] - own[0]) / 2


def test_method_intervals_pair_the_reference_with_every_other_method():
    values = {m: {"R@1": torch.tensor([1.0, 0.0, 1.0, 1.0])} for m in ("composed", "image", "text")}
    block = intervals.method_intervals(values, "composed")
    assert set(block["bootstrap"]) == {"composed", "image", "text"}
    assert set(block["paired"]) == {"composed minus image", "composed minus text"}
    assert block["paired"]["composed minus text"]["R@1"] == {"difference": 0.0, "interval": [0.0, 0.0]}


def _means(values: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, float]]:
    return {m: {k: 100.0 * v.mean().item() for k, v in metrics.items()} for m, metrics in values.items()}


@pytest.mark.parametrize("suite", ["shapes", "fashioniq", "circo"])
def test_query_values_average_to_each_protocols_metrics(tmp_path, suite):
    """For every protocol, 100 x the mean of the per-query values is the metric."""
    from backbones.blip_tiny import build_random
    from harness.evaluation.embed import embed_split
    from harness.evaluation.protocols import PROTOCOLS, ScoringRules
    from harness.suites import SUITES
    from harness.suites.shapes import ensure_dataset
    from harness.suites.shapes_generator import ShapesSpec

    if suite == "shapes":
        ensure_dataset(tmp_path, ShapesSpec(seed=2, image_size=32, sets={"train": 4, "val": 15, "test1": 2},
                                            queries_per_set={"train": 2, "val": 3, "test1": 2}))
        suite_obj = SUITES.get(suite)(tmp_path)
    else:
        suite_obj = SUITES.get(suite)(None)
    data = suite_obj.load("val")
    emb = embed_split(build_random(seed=1), data, torch.device("cpu"), "fp32", 64)
    protocol, rules = PROTOCOLS.get(suite_obj.scoring), ScoringRules()
    metrics = protocol.evaluate(data, emb, rules)
    means = _means(protocol.query_values(data, emb, rules))
    for method, m in metrics.items():
        assert means[method] == pytest.approx(m, abs=1e-9), method


@pytest.fixture(scope="module")
def two_recipes(tmp_path_factory):
    """Two recipes (batch 4 and batch 2), each over seeds 0 and 1, on a small split."""
    from harness.config import RunConfig
    from harness.over_seeds import run_seeds
    from harness.suites.shapes import ensure_dataset
    from harness.suites.shapes_generator import ShapesSpec

    root = tmp_path_factory.mktemp("seeds")
    ensure_dataset(root / "shapes", ShapesSpec(seed=2, image_size=32, sets={"train": 8, "val": 10, "test1": 2},
                                               queries_per_set={"train": 2, "val": 2, "test1": 2}))
    summaries = []
    for batch in (4, 2):
        config = RunConfig.resolve({"data_root": str(root / "shapes"), "out": str(root / "out"), "epochs": 1,
                                    "batch_size": batch, "warmup_steps": 1, "cache": False, "threads": 1})
        summaries.append(run_seeds(config, [0, 1], ["--epochs", "1", "--batch-size", str(batch), "--seeds", "0", "1"]))
    return root / "out", summaries


def test_seeds_write_one_file_with_each_seed_mean_sd_and_intervals(two_recipes):
    from harness.over_seeds import argv_for_seed, run_seeds
    from harness.reports.benchmarks import benchmarks_markdown, load_results

    out, (summary, _) = two_recipes
    files = sorted(p.name for p in out.glob("*.json"))
    assert len(files) == 6 and sum(f.endswith("_seeds-0-1.json") for f in files) == 2
    saved_path = out / files[[f.endswith("_seeds-0-1.json") and summary["config_hash_seedless"][:8] in f
                              for f in files].index(True)]
    saved = json.loads(saved_path.read_text())
    assert saved == json.loads(json.dumps(summary))
    assert [r["seed"] for r in saved["runs"]] == [0, 1] and all(r["result_file"] in files for r in saved["runs"])
    r1 = saved["summary"]["composed f(q,t)"]["R@1"]
    values = [r["metrics"]["composed f(q,t)"]["R@1"] for r in saved["runs"]]
    assert r1["values"] == values and r1["mean"] == pytest.approx(sum(values) / 2)
    assert r1["sd"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5)
    assert all(r["intervals"]["paired"]["composed f(q,t) minus image-only q"] for r in saved["runs"])
    one_seed = json.loads((out / saved["runs"][1]["result_file"]).read_text())
    assert one_seed["command"].endswith("--epochs 1 --batch-size 4 --seed 1")
    text = benchmarks_markdown(load_results([out]))
    assert text.count("Over 2 seeds") == 2 and "±" in text
    assert argv_for_seed(["--seed", "3", "--seeds", "1", "2", "--lr", "1e-3"], 2) == ["--lr", "1e-3", "--seed", "2"]
    with pytest.raises(Exception, match="two or more different seeds"):
        from harness.config import RunConfig

        run_seeds(RunConfig.resolve({}), [1, 1])


def test_compare_pairs_each_seed_on_the_same_queries(two_recipes, tmp_path):
    from harness.compare import compare, main
    from harness.core.errors import HarnessError
    from harness.reports.benchmarks import benchmarks_markdown

    out, summaries = two_recipes
    paths = [out / f"shapes_val_blip-tiny_{s['config_hash_seedless'][:8]}_seeds-0-1.json" for s in summaries]
    result = compare(*paths)
    assert result["seeds"] == [0, 1]
    for seed_row, run_a, run_b in zip(result["per_seed"], summaries[0]["runs"], summaries[1]["runs"]):
        expected = run_a["metrics"]["composed f(q,t)"]["R@1"] - run_b["metrics"]["composed f(q,t)"]["R@1"]
        assert seed_row["paired"]["R@1"]["difference"] == pytest.approx(expected, abs=1e-9)
    d = result["difference"]["R@1"]
    assert d["values"] == [s["paired"]["R@1"]["difference"] for s in result["per_seed"]]
    assert d["holds"] == (d["seeds_beyond_query_noise"] == 2 and abs(d["mean"]) > 2 * d["sd"])
    assert main([str(paths[0]), str(paths[1]), "--out", str(tmp_path / "c.json")]) == 0
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["command"].startswith("python -m harness.compare")
    assert "Recipes compared over seeds" in benchmarks_markdown([(tmp_path / "c.json", saved)])
    one_run = out / summaries[0]["runs"][0]["result_file"]
    with pytest.raises(HarnessError, match="not a --seeds results file"):
        compare(one_run, paths[1])
