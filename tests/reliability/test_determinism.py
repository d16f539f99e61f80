"""Determinism: the same command and seed give identical metrics on CPU, and the
results file records what it takes to run it again."""

from __future__ import annotations

import dataclasses

import pytest

from harness.config import RunConfig
from harness.pipeline import run
from tests.reliability.faults import fault

TRAINED = {"train": True, "epochs": 2, "cache": False}


def once(root, out, **changes):
    given = {"data_root": str(root), "out": str(out), **TRAINED, **changes}
    return run(RunConfig.resolve(given), argv=["--seed", str(given.get("seed", 0))])


@pytest.fixture(scope="module")
def first(small_shapes, tmp_path_factory):
    return once(small_shapes, tmp_path_factory.mktemp("first"))


@fault("Determinism", "the same fine-tune + evaluation run twice (blip-tiny, seed 0, CPU, no cache)",
       "identical metrics, loss curve and fine-tuned checkpoint SHA-256")
def test_same_command_and_seed_twice(small_shapes, tmp_path, first):
    second = once(small_shapes, tmp_path)
    assert second["metrics"] == first["metrics"]
    assert second["training"]["step_losses"] == first["training"]["step_losses"]
    assert second["backbone"]["checkpoint_sha256"] == first["backbone"]["checkpoint_sha256"]


@fault("Determinism", "a rerun built only from a results file's recorded config",
       "same config hash and identical metrics; the file records command, seed, git commit, packages, "
       "hardware and annotation hashes")
def test_results_record_what_reruns_it(small_shapes, tmp_path, first):
    for key in ("command", "config", "config_hash", "seed", "git", "packages", "hardware", "precision"):
        assert first.get(key) is not None, key
    assert first["data"]["caption_sha256"] and first["data"]["split_sha256"]
    assert first["data"]["reader_version"] and first["data"]["manifest"]["generator_version"]
    assert first["packages"].get("torch") and first["packages"].get("transformers")
    recorded = RunConfig(**{**first["config"], "out": str(tmp_path)})
    assert recorded.hash() == first["config_hash"]
    again = run(recorded, argv=[])
    assert again["metrics"] == first["metrics"]


@fault("Determinism", "another seed", "another fine-tuned checkpoint: the seed is really used")
def test_another_seed_differs(small_shapes, tmp_path, first):
    other = once(small_shapes, tmp_path, seed=1)
    assert other["backbone"]["checkpoint_sha256"] != first["backbone"]["checkpoint_sha256"]


def test_config_fields_all_recorded(first):
    """Every RunConfig field is in the results file (so none can be lost on a rerun)."""
    assert set(first["config"]) == {f.name for f in dataclasses.fields(RunConfig)}
