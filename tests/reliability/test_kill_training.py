"""Kill a fine-tuning run with SIGKILL in the middle of an epoch, rerun it with
--resume: it continues from the last training state (written every 3 steps) and
ends with the metrics, losses and weights of a run that was never interrupted."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.suites.shapes import ensure_dataset
from harness.suites.shapes_generator import ShapesSpec
from tests.conftest import REPO

SPEC = ShapesSpec(seed=8, sets={"train": 40, "val": 10, "test1": 2},
                  queries_per_set={"train": 4, "val": 2, "test1": 1})
STEPS_PER_EPOCH = 10  # 160 training queries / batch 16


def _command(root: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "harness.run", "--data-root", str(root), "--out", str(out),
            "--no-cache", "--threads", "1", "--epochs", "2", "--batch-size", "16",
            "--checkpoint-every", "3", *extra]


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "COIR_BENCH_CACHE": str(tmp_path / "cache")}


def _result(out: Path) -> dict:
    [path] = list(out.glob("*.json"))
    return json.loads(path.read_text())


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    root = tmp_path / "shapes"
    ensure_dataset(root, SPEC)
    env = _env(tmp_path)
    whole = subprocess.run(_command(root, tmp_path / "whole"), cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-3000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen(_command(root, out), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    try:
        # The first state appears after step 3 of 10: kill as soon as it is there.
        while not list(out.glob("checkpoints/*.train-state/progress.pt")):
            assert proc.poll() is None, "the run ended before writing a training state"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not list(out.glob("*.json")), "killed before the run finished"

    resumed = subprocess.run(_command(root, out, "--resume"), cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    step = int(re.search(r"resuming from step (\d+)/20", resumed.stderr).group(1))
    assert 0 < step < 20 and step % STEPS_PER_EPOCH != 0, f"resumed at step {step}: not mid-epoch"

    a, b = _result(tmp_path / "whole"), _result(out)
    assert a["config_hash"] == b["config_hash"]
    assert b["training"]["resumed_from_step"] == step
    assert b["training"]["step_losses"] == pytest.approx(a["training"]["step_losses"], rel=1e-6, abs=1e-7)
    assert b["training"]["rank_parameter_sha256"] == a["training"]["rank_parameter_sha256"]
    for method, values in a["metrics"].items():
        for name, value in values.items():
            assert b["metrics"][method][name] == pytest.approx(value, abs=1e-9), (method, name)
    # the training state is removed once the run completed
    assert not list(out.glob("checkpoints/*.train-state"))
