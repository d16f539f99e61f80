"""Shared fixtures. Torch runs on at most 2 threads: more fight the other process
on a 2-core machine and make tiny forward passes far slower."""

from __future__ import annotations

import os

# Triton fixes interpreter mode at its first import (transformers imports it early):
# CPU runs test the kernels in the interpreter. GPU runs: TRITON_INTERPRET=0 pytest -m gpu.
os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from harness.suites.cirr_standin import VENDORED_ANNOTATIONS, standin_root  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

# The `original` and `blip_file` fixtures: tiny checkpoints in BLIP's own layout.
pytest_plugins = ["tests.originals.blip"]

REPO = Path(__file__).resolve().parent.parent
CIRR_ANNOTATIONS = VENDORED_ANNOTATIONS  # tests/data/cirr: the real val and test1 annotations


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Generated data and caches go to a per-session temporary folder, never ~/.cache."""
    monkeypatch.setenv("COIR_BENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def cirr_root(tmp_path_factory) -> Path:
    """The real CIRR annotations (vendored) with small stand-in images (NLVR2 is not
    redistributable)."""
    return standin_root(CIRR_ANNOTATIONS, tmp_path_factory.mktemp("cirr"), ["val", "test1"])


def pytest_addoption(parser):
    parser.addoption("--skip-slow", action="store_true", help="skip tests marked slow (quick local loop)")


def pytest_configure(config):
    if config.getoption("--skip-slow"):
        config.option.markexpr = "not slow" if not config.option.markexpr else f"({config.option.markexpr}) and not slow"


def random_model_run(root: Path, **config) -> dict:
    """A run of blip-tiny at random weights (no training) on a small generated shapes
    split (45 val queries, 12 test1), results under root/out; `config` overrides."""
    from backbones.blip_tiny import build_random
    from harness.config import RunConfig
    from harness.pipeline import run
    from harness.suites.shapes import ensure_dataset
    from harness.suites.shapes_generator import ShapesSpec

    ensure_dataset(root / "shapes", ShapesSpec(seed=2, image_size=32, sets={"train": 4, "val": 15, "test1": 6},
                                               queries_per_set={"train": 2, "val": 3, "test1": 2}))
    if not (root / "ckpt").exists():
        build_random(seed=5).save(root / "ckpt")
    settings = {"data_root": str(root / "shapes"), "checkpoint": str(root / "ckpt"), "train": False,
                "cache": False, "out": str(root / "out"), **config}
    return run(RunConfig.resolve(settings), argv=["(test run)"])
