"""Extraction sharded across processes (torchrun, gloo on CPU) gives the same
embeddings and metrics as one process; rank 0 alone writes results."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from backbones.blip_tiny import build_random
from harness.config import RunConfig
from harness.pipeline import run
from harness.suites.shapes import ensure_dataset
from harness.suites.shapes_generator import ShapesSpec
from tests.conftest import REPO

SPEC = ShapesSpec(seed=2, sets={"train": 4, "val": 15, "test1": 4},
                  queries_per_set={"train": 2, "val": 2, "test1": 2})


@pytest.mark.slow
def test_two_ranks_match_one_process(tmp_path):
    ensure_dataset(tmp_path / "shapes", SPEC)
    build_random(seed=5).save(tmp_path / "ckpt")
    common = ["--backbone", "blip-tiny", "--suite", "shapes", "--data-root", str(tmp_path / "shapes"),
              "--checkpoint", str(tmp_path / "ckpt"), "--no-train", "--no-cache", "--threads", "1"]
    single = run(RunConfig.resolve({"data_root": str(tmp_path / "shapes"), "checkpoint": str(tmp_path / "ckpt"),
                                    "train": False, "cache": False, "out": str(tmp_path / "one")}), argv=common)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "COIR_BENCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "harness.run", *common, "--out", str(tmp_path / "two")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = list((tmp_path / "two").glob("*.json"))
    assert len(files) == 1, "only rank 0 writes the result"
    sharded = json.loads(files[0].read_text())
    assert sharded["timings"]["embedding"]["ranks"] == 2
    for method, values in single["metrics"].items():
        for name, value in values.items():
            assert sharded["metrics"][method][name] == pytest.approx(value, abs=1e-6), (method, name)
