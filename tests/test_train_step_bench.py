"""benches/train_step_gpu.py, its CPU-side logic at toy size: both configurations
run through a DeepSpeed ZeRO-2 engine, the JSON has what BENCHMARKS.md renders.
The GPU measurement itself (BLIP-Large, fp16, batch 1024) needs a CUDA device."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness.reports.benchmarks import benchmarks_markdown
from tests.conftest import REPO


@pytest.mark.slow
def test_bench_runs_plain_and_cached_steps_on_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-m", "benches.train_step_gpu", "--out", str(tmp_path), "--backbone", "blip-tiny",
         "--device", "cpu", "--precision", "fp32", "--configs", "plain:4", "cached:4:2", "--steps", "1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = tmp_path / "train_step_cpu.json"
    result = json.loads(path.read_text())
    assert result["kind"] == "train_step"
    assert [r["status"] for r in result["rows"]] == ["ok", "ok"]
    assert [r["grad_cache_chunk"] for r in result["rows"]] == [None, 2]
    assert all(r["zero_stage"] == 2 and r["samples_per_second"] > 0 for r in result["rows"])
    assert "cached:4:2" in benchmarks_markdown([(path, result)])
