"""Shared data for the reliability tests: a small generated `shapes` dataset (CIRR
layout, 24 val queries over a few dozen images) and a writable copy of it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from backbones.blip_tiny import build_random
from harness.config import RunConfig
from harness.suites.shapes import ensure_dataset
from harness.suites.shapes_generator import ShapesSpec

SMALL = ShapesSpec(seed=1, sets={"train": 4, "val": 12, "test1": 4},
                   queries_per_set={"train": 2, "val": 2, "test1": 2})


@pytest.fixture(scope="session")
def small_shapes(tmp_path_factory) -> Path:
    """Read-only: tests that damage files use `shapes_copy`."""
    root = tmp_path_factory.mktemp("reliability") / "shapes"
    ensure_dataset(root, SMALL)
    return root


@pytest.fixture
def shapes_copy(small_shapes, tmp_path) -> Path:
    root = tmp_path / "shapes"
    shutil.copytree(small_shapes, root)
    return root


@pytest.fixture
def cached_eval_config(small_shapes, tmp_path, monkeypatch) -> RunConfig:
    """An evaluation-only run of a random tiny checkpoint on `small_shapes`, with its
    embedding cache in tmp_path/cache."""
    monkeypatch.setenv("COIR_BENCH_CACHE", str(tmp_path / "cache"))
    checkpoint = tmp_path / "tiny"
    build_random(seed=2).save(checkpoint)
    return RunConfig.resolve({"data_root": str(small_shapes), "checkpoint": str(checkpoint),
                              "out": str(tmp_path / "out"), "train": False})
