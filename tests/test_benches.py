"""The benches' plumbing, cheaply: the GPU check's time budget, the scoring suite's
smoke plan, and a served scoring job (how pytest-benchmark times faiss)."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from benches.scoring_suite import job_command, run_plan
from tests.conftest import REPO


def test_gpu_check_steps_fit_six_minutes():
    """A lent GPU has 15 minutes in all, start-up included: the check and a rerun must fit."""
    done = subprocess.run(["bash", "benches/gpu_check.sh", "--plan"], cwd=REPO, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    limits = [int(m) for m in re.findall(r"^\s+(\d+) s  ", done.stdout, flags=re.M)]
    assert len(limits) >= 5 and sum(limits) <= 360, done.stdout
    names = re.findall(r"^\s+\d+ s  (.+)$", done.stdout, flags=re.M)
    assert names.index("gpu tests") < names.index("scoring plan")  # correctness first


def test_smoke_plan_writes_every_row_with_the_same_recall(tmp_path):
    out = tmp_path / "scoring.json"
    result = run_plan("smoke", None, timeout=300, out=out)
    assert json.loads(out.read_text()) == result
    rows = {row["provider"]: row for row in result["rows"] if row["label"] == "tiny"}
    assert all("error" not in row for row in result["rows"]), result["rows"]
    assert rows["reference-rank"]["recall"] == rows["torch-mm-topk"]["recall"]
    assert result["hardware"]["cpu"] and result["git"]["commit"]


def test_a_served_job_times_each_call_it_is_sent():
    command = [*job_command(dict(provider="reference-rank", queries=40, gallery=200, dim=16)), "--serve"]
    process = subprocess.Popen(command, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert json.loads(process.stdout.readline())["ready"]
        replies = []
        for _ in range(2):
            process.stdin.write("run\n")
            process.stdin.flush()
            replies.append(json.loads(process.stdout.readline()))
    finally:
        process.stdin.close()
        assert process.wait(timeout=60) == 0, process.stderr.read()
    assert [len(r["all_seconds"]) for r in replies] == [1, 2]
    assert replies[0]["recall"] == replies[1]["recall"] and replies[1]["seconds"] > 0


@pytest.mark.slow
def test_train_profile_writes_the_loop_and_every_optimizer(tmp_path):
    from benches.train_profile import OPTIMIZERS, main
    from harness.reports.benchmarks import benchmarks_markdown, load_results

    assert main(["--out", str(tmp_path), "--steps", "2", "--warmup", "1", "--repeats", "2", "--threads", "1"]) == 0
    result = json.loads((tmp_path / "train_profile_cpu.json").read_text())
    assert result["loop"]["samples_per_second"] > 0 and result["command"].endswith("--threads 1")
    assert [r["optimizer"] for r in result["optimizer_step"]] == list(OPTIMIZERS)
    assert "Fine-tuning step profile" in benchmarks_markdown(load_results([tmp_path]))
