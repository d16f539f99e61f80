"""Fine-tuning's precision: --precision by name applies to training and evaluation;
under "auto" evaluation stays fp32 and training takes its recipe's, the `tiny`
recipe's bf16 autocast only where the CPU computes bf16 in hardware."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from harness.config import RunConfig
from harness.core import precision
from harness.core.errors import HarnessError
from harness.core.precision import NATIVE_BF16, training_precision
from tests.conftest import REPO

REFERENCE = REPO / "results" / "reference"

CPU = torch.device("cpu")


@pytest.fixture
def isa(monkeypatch):
    """Set the instruction sets the CPU reports."""
    def set_flags(*flags):
        monkeypatch.setattr(precision, "cpu_identity", lambda: {"cpu_isa": list(flags)})
    return set_flags


@pytest.mark.parametrize("flags, want", [
    (("avx2", "avx512f", "avx512_bf16"), "bf16"),  # AMD Zen 4 / Zen 5
    (("avx2", "avx512f", "amx_tile", "amx_bf16"), "bf16"),  # Intel Sapphire Rapids
    (("avx2", "avx512f", "avx512_vnni"), "fp32"),  # Intel Cascade Lake: bf16 would be emulated
    ((), "fp32"),
])
def test_native_bf16_follows_the_cpu_flags(isa, flags, want):
    isa(*flags)
    assert training_precision("auto", NATIVE_BF16, CPU) == want


def test_a_precision_given_by_name_applies_to_training(isa):
    isa("avx512_bf16")
    assert training_precision("fp32", NATIVE_BF16, CPU) == "fp32"
    isa()
    assert training_precision("bf16", "fp32", CPU) == "bf16"
    with pytest.raises(HarnessError, match="needs a CUDA device"):
        training_precision("fp16", NATIVE_BF16, CPU)


def test_auto_takes_the_recipes_and_refuses_an_unknown_one(isa):
    isa("avx512_bf16")
    assert training_precision("auto", "fp32", CPU) == "fp32"
    with pytest.raises(HarnessError, match="train_precision"):
        training_precision("auto", "bf16", CPU)


def test_the_tiny_recipe_trains_in_native_bf16_and_covrs_in_fp32():
    assert RunConfig.resolve({}).train_precision == NATIVE_BF16
    covr = RunConfig.resolve({"backbone": "blip-base", "recipe": "covr"})
    assert covr.train_precision == "fp32"
    assert covr.hash() != dataclasses.replace(covr, train_precision=NATIVE_BF16).hash()


def test_runs_recorded_before_the_field_keep_their_hashes():
    """fp32, the field's default, is left out of the hash (config.ADDED_FIELDS)."""
    for path in sorted(REFERENCE.glob("*batch-size*.json")) or sorted(REFERENCE.glob("*.json")):
        recorded = json.loads(path.read_text())
        if recorded.get("config", {}).get("recipe") == "covr":
            config = RunConfig.from_dict(recorded["config"])
            assert config.train_precision == "fp32"
            assert config.hash() == recorded["config_hash"], path.name
            return
    pytest.fail("no covr-recipe run in results/reference")


def test_a_bad_recipe_precision_is_refused():
    with pytest.raises(HarnessError, match="train_precision must be one of"):
        RunConfig.resolve({"train_precision": "bf16"})
