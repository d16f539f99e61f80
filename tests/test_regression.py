"""Recall regression: the default run (blip-tiny trained on shapes with the `tiny`
recipe, seed 0, evaluated on shapes val) must reach a floor and beat both
single-modality baselines by a margin.

How the numbers were obtained: benches/regenerate_reference.py runs the default
run for seeds 0-4 on one machine (`python -m harness.run --seeds 0 1 2 3 4`) and
keeps the file over the seeds in results/reference/ (its machine, commit and each
seed's figures in it). A run on any other machine is another sample of that spread:
the seed and the CPU's floating-point path move recall, not what the recipe learns.
A metric's floor is the lowest seed's value minus FLOOR_SDS sample sds over the
seeds (and at least MIN_GAP points below it); the composed query must also lead
each baseline by BASELINE_MARGIN points. The check can fail: the same model left at
its random initialisation fails it (`test_untrained_model_fails_the_floor`).
"""

from __future__ import annotations

import json

import pytest
import torch

from benches.regenerate_reference import FIVE, seeds_file
from harness.config import RunConfig
from harness.core.precision import native_bf16
from harness.pipeline import run
from harness.reports.benchmarks import benchmarks_markdown
from harness.training.recipes import RECIPES
from tests.conftest import REPO

SPREAD = REPO / seeds_file([], FIVE)
CHECKED = ("R@1", "R@5", "R@10", "Avg")
FLOOR_SDS = 3.0
MIN_GAP = 5.0
BASELINE_MARGIN = 20.0  # points the composed R@1 / R@5 / R@10 must lead each baseline by


def default_run(out, train: bool = True) -> dict:
    config = RunConfig.resolve({"out": str(out), "cache": False, "threads": 2, "train": train})
    return run(config, argv=["(regression test)"])


def spread() -> dict:
    if not SPREAD.is_file():
        pytest.fail(f"{SPREAD.relative_to(REPO)} is missing: python -m benches.regenerate_reference makes it")
    return json.loads(SPREAD.read_text())["summary"]


def floors(summary: dict) -> dict[str, float]:
    composed = summary["composed f(q,t)"]
    return {name: min(composed[name]["values"]) - max(FLOOR_SDS * composed[name]["sd"], MIN_GAP)
            for name in CHECKED}


def problems(metrics: dict, summary: dict) -> list[str]:
    """What a result fails of the regression check (empty: it passes)."""
    composed = metrics["composed f(q,t)"]
    found = [f"{name}: {composed[name]:.2f} < floor {floor:.2f}"
             for name, floor in floors(summary).items() if composed[name] < floor]
    for baseline in ("image-only q", "text-only t"):
        for name in ("R@1", "R@5", "R@10"):
            if composed[name] < metrics[baseline][name] + BASELINE_MARGIN:
                found.append(f"{name}: composed {composed[name]:.2f} does not lead {baseline} "
                             f"({metrics[baseline][name]:.2f}) by {BASELINE_MARGIN}")
    return found


@pytest.fixture(scope="module")
def regression_result(tmp_path_factory):
    return default_run(tmp_path_factory.mktemp("regression"))


@pytest.mark.slow
def test_composed_recall_above_floor_and_baselines(regression_result):
    assert not problems(regression_result["metrics"], spread())


@pytest.mark.slow
def test_untrained_model_fails_the_floor(tmp_path):
    """The check can fail: the default model left at its random initialisation."""
    result = default_run(tmp_path, train=False)
    assert len(problems(result["metrics"], spread())) >= len(CHECKED)


def test_floors_come_from_five_seeds_of_the_current_recipe():
    data = json.loads(SPREAD.read_text()) if SPREAD.is_file() else pytest.fail(f"{SPREAD} is missing")
    assert data["seeds"] == FIVE and data["config"]["recipe"] == RunConfig.resolve({}).recipe
    assert data["config_hash_seedless"] == RunConfig.resolve({"out": "x"}).seedless_hash()
    for name, floor in floors(data["summary"]).items():
        assert floor < min(data["summary"]["composed f(q,t)"][name]["values"])
    assert floors(data["summary"])["R@1"] > 100 * 10 / 1685  # ten times chance over the val gallery


@pytest.mark.slow
def test_result_file_carries_provenance_and_builds_tables(regression_result):
    result = regression_result
    for key in ("config", "config_hash", "seed", "protocol", "git", "packages", "hardware", "timings", "training",
                "intervals", "per_query_file"):
        assert key in result
    expected = {
        "suite": "shapes", "split": "val", "queries": 600, "reference_removed": True, "tie_rule": "pessimistic",
        "convention": "covr", "recall_ks": [1, 5, 10, 50], "subset_ks": [1, 2, 3], "caption_cleaning": "covr",
        "gallery": "split file",
    }
    assert {k: result["protocol"][k] for k in expected} == expected
    assert result["protocol"]["fingerprint"]["hash"] and result["protocol"]["gallery_model"]
    epochs = RECIPES["tiny"]["epochs"]
    assert result["training"]["steps"] == epochs * (20000 // 64) and len(result["training"]["loss_curve"]) == epochs
    # bf16 autocast where the CPU computes bf16 in hardware, fp32 elsewhere; evaluation in fp32
    assert result["training"]["precision"] == ("bf16" if native_bf16(torch.device("cpu")) else "fp32")
    assert result["precision"] == "fp32"
    assert result["training"]["loss_curve"][-1] < result["training"]["loss_curve"][0] / 4
    markdown = benchmarks_markdown([(REPO / "r.json", result)])
    assert "composed f(q,t)" in markdown and result["hardware"]["cpu"] in markdown
