"""The benches' plumbing, cheaply: the GPU check's time budget, the scoring suite's
smoke plan, and a served scoring job (how pytest-benchmark times faiss)."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import torch

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
    from harness.reports.scoring import scoring_section

    lines = "\n".join(scoring_section(out, result))  # small problems: torch's GEMM, unprobed
    assert "- tiny: GEMMs: reference-rank torch 1024x4096; two-stage-rank torch 1024x4096" in lines


def _faiss_job(provider: str) -> dict:
    done = subprocess.run(job_command(dict(provider=provider, queries=60, gallery=400, dim=32)), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_faiss_on_its_avx512_kernels_finds_what_faiss_finds():
    """The second peer of the CPU plan: faiss-cpu's own OpenBLAS made to load its AVX-512
    kernels (benches/scoring_job.py force_faiss_avx512)."""
    pytest.importorskip("faiss")
    from coir_kernels import gemm, openblas_avx512

    if openblas_avx512.missing_flags(gemm.cpu_flags()):
        pytest.skip("no AVX-512 CPU here")
    forced, plain = _faiss_job("faiss-avx512"), _faiss_job("faiss")
    assert forced["provider"] == "faiss-avx512" and forced["recall"] == plain["recall"]
    assert forced["blas_core"] == "SkylakeX" and plain["blas_core"]


def test_faiss_avx512_says_what_it_needs(monkeypatch):
    from benches import scoring_job
    from coir_kernels import gemm

    monkeypatch.setattr(gemm, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    with pytest.raises(SystemExit, match="needs a CPU with AVX-512; this one lacks avx512cd, avx512bw"):
        scoring_job.force_faiss_avx512()


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


def test_the_gpu_plan_computes_how_100m_items_split_over_8_gpus(tmp_path, monkeypatch):
    """A computed row, not a measured one: each rank's shard and its roofline time from
    the stated H200 figures (790 TFLOP/s, 4.3 TB/s, NVLink 450 GB/s each way), and the
    report labels it computed."""
    from benches.scoring_suite import PLANS
    from benches.shard_plan import COMPUTED, computed_row
    from harness.reports.scoring import scoring_section

    [(label, arguments)] = [(label, a) for label, a in PLANS["gpu"] if a["provider"] == COMPUTED]
    row = computed_row(**arguments)
    assert row["gallery_rows_per_rank"] == 12_500_000 and row["shard_bytes_per_rank"] == 12_500_000 * 256 * 2
    compute = 2 * 10_000 * 12_500_000 * 256 / 790e12  # the GEMM's FLOPs at the stated peak
    memory = (10_000 * 256 * 2 + 12_500_000 * 256 * 2 + 10_000 * (16 + 50 * 12)) / 4.3e12
    assert row["roofline_per_rank"]["compute_s"] == pytest.approx(compute)
    assert row["roofline_per_rank"]["memory_s"] == pytest.approx(memory)
    exchanged = 10_000 * 256 * 4 + 10_000 * 16 + 7 * 10_000 * 50 * 12  # positive rows, counts, candidates
    assert row["exchange_bytes_per_rank"] == exchanged
    assert row["seconds_per_rank"] == pytest.approx(max(compute, memory) + exchanged / 450e9)
    assert row["one_device"]["t_min_s"] == pytest.approx(8 * compute)
    assert 7.9 < row["speedup_over_one_device"] < 8
    with pytest.raises(ValueError, match="gallery >= ranks"):
        computed_row(queries=10, gallery=4, ranks=8, machine="H200")

    from benches import scoring_suite

    monkeypatch.setattr(scoring_suite, "_device", lambda plan: torch.device("cpu"))  # the header's hardware
    result = run_plan("gpu", "(computed)", timeout=1, out=tmp_path / "plan.json")  # runs nothing on a device
    assert result["rows"] == [{"label": label, **row}]
    lines = "\n".join(scoring_section(tmp_path / "plan.json", result))
    assert "Computed, not measured" in lines and f"| {label} |" in lines and "12500000" in lines
