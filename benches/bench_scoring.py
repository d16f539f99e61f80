"""Scoring benches: the retrieval core against torch matmul+topk and faiss-cpu.

    pytest benches --benchmark-only                    # CIRR size; Triton ones need CUDA
    COIR_BENCH_LARGE=1 pytest benches --benchmark-only # + 10k x 100k and 10k x 1M on CPU

In-process benches run the CIRR-size problem (4,181 x 2,297, D=256) of
benches/scoring_job.py. faiss, and every large problem, run in a process of
their own (faiss's and torch's OpenMP pools fight in one process) that stays up
(`scoring_job --serve`): the data is made and the call warmed up before timing,
and each timed round sends one line and waits for the reply, so the benchmark
times the scoring call as the in-process rows do (the pipe adds microseconds);
the process's own timing of the call is in extra_info["seconds"]. For the
results file BENCHMARKS.md is built from, use `python -m benches.scoring_suite`.

extra_info: queries/s, effective TFLOP/s and GB/s, and the fraction of the
roofline T_min = max(2QGD / peak, bytes / bandwidth) (benches/roofline.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import coir_kernels
from benches.roofline import machine_key, measured_cpu_peak, t_min
from benches.scoring_job import make_problem, sweep_weights
from benches.scoring_suite import REPO, job_command
from coir_kernels import reference

Q, G, D, K = 4181, 2297, 256, 50
CUDA = torch.cuda.is_available()
LARGE = os.environ.get("COIR_BENCH_LARGE", "0") not in ("", "0")


def problem(device="cpu", dtype=torch.float32):
    return make_problem(Q, G, D, seed=0, device=device, dtype=dtype, noise=3.0)


def derived_units(benchmark, provider: str, device: str, dtype: torch.dtype, parts: int = 1):
    seconds = benchmark.stats.stats.min
    machine = machine_key(torch.device(device))
    peak = source = None
    if machine == "cpu":  # the rate of the format the provider multiplies in, measured here
        low = provider.startswith("two-stage")
        peak = measured_cpu_peak(torch.bfloat16 if low else torch.float32)
        source = f"measured {'bf16' if low else 'fp32'} GEMM"
    floor = t_min(Q, G, D, torch.finfo(dtype).bits // 8, Q * 16, machine, parts=parts, peak=peak, peak_source=source)
    benchmark.extra_info.update(
        provider=provider, device=device, dtype=str(dtype), shape=f"{Q}x{G}x{D}", k=K,
        threads=torch.get_num_threads(), queries_per_s=Q / seconds,
        effective_tflop_per_s=floor["flops"] / seconds / 1e12,
        effective_gb_per_s=floor["bytes"] / seconds / 1e9,
        roofline_fraction=floor["t_min_s"] / seconds,
    )


def sync_after(fn, device):
    def run():
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    return run


@pytest.mark.parametrize("provider", ["reference-rank", "two-stage-rank", "torch-mm-topk"])
def bench_cirr_size_cpu(benchmark, provider):
    q, g, target, exclude = problem()
    if provider.endswith("-rank"):
        impl = provider.removesuffix("-rank")
        coir_kernels.target_rank_counts(q[:8], g, target[:8, None], exclude[:8], impl=impl)  # compile outside the timing
        benchmark(coir_kernels.target_rank_counts, q, g, target[:, None], exclude, impl=impl)
    else:
        benchmark(lambda: torch.topk(q @ g.T, K + 1, dim=1))
    derived_units(benchmark, provider, "cpu", torch.float32)


@pytest.mark.parametrize("triples", [1, 66, 231])
@pytest.mark.parametrize("provider", ["reference-sweep", "recompute-sweep"])
def bench_sweep_cirr_size_cpu(benchmark, provider, triples):
    q, g, target, exclude = problem()
    parts = (q, q.roll(1, 0), q.roll(2, 0))
    weights = sweep_weights(triples)
    positives = target[:, None]
    if provider == "reference-sweep":
        reference.mixed_rank_counts(tuple(p[:8] for p in parts), g, weights, positives[:8], exclude[:8])
        benchmark.pedantic(reference.mixed_rank_counts, (parts, g, weights, positives, exclude),
                           rounds=3, iterations=1)
    else:
        def recompute():
            for w in weights:
                mixed = torch.nn.functional.normalize(w[0] * parts[0] + w[1] * parts[1] + w[2] * parts[2], dim=-1)
                reference.target_rank_counts(mixed, g, positives, exclude)

        benchmark.pedantic(recompute, rounds=1 if triples > 1 else 3, iterations=1)
    benchmark.extra_info["triples"] = triples
    derived_units(benchmark, provider, "cpu", torch.float32, parts=3 if provider == "reference-sweep" else 1)


class ServedJob:
    """A `scoring_job --serve` process: started (data made, call warmed up) outside
    any timing; `call()` is one timed scoring call in it."""

    def __init__(self, arguments: dict):
        self.process = subprocess.Popen([*job_command(arguments), "--serve"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        self.last = self._reply()

    def _reply(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("scoring job ended: " + self.process.stderr.read()[-2000:])
        return json.loads(line)

    def call(self) -> dict:
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        self.last = self._reply()
        return self.last

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def run_job(benchmark, rounds: int = 1, **arguments):
    """The scoring call timed in a process of its own; its own timing goes to extra_info."""
    job = ServedJob(arguments)
    try:
        benchmark.pedantic(job.call, rounds=rounds, iterations=1)
    finally:
        job.close()
    benchmark.extra_info.update({k: v for k, v in job.last.items() if k != "all_seconds"})
    return job.last


def bench_faiss_cirr_size_own_process(benchmark):
    pytest.importorskip("faiss")
    run_job(benchmark, rounds=5, provider="faiss", queries=Q, gallery=G)


@pytest.mark.skipif(not LARGE, reason="large CPU problems: set COIR_BENCH_LARGE=1 (minutes)")
@pytest.mark.parametrize("gallery", [100_000, 1_000_000])
@pytest.mark.parametrize("provider", ["reference-rank", "torch-mm-topk", "faiss"])
def bench_large_cpu_own_process(benchmark, provider, gallery):
    if provider == "faiss":
        pytest.importorskip("faiss")
    run_job(benchmark, provider=provider, queries=10_000, gallery=gallery)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("provider", ["triton-rank", "triton-topk", "torch-mm-topk", "triton-sweep-231"])
def bench_cirr_size_gpu(benchmark, provider):
    q, g, target, exclude = problem("cuda", torch.float16)
    positives = target[:, None]
    calls = {
        "triton-rank": lambda: coir_kernels.target_rank_counts(q, g, positives, exclude, impl="triton"),
        "triton-topk": lambda: coir_kernels.topk_excluding(q, g, K, exclude, impl="triton"),
        "torch-mm-topk": lambda: torch.topk(q @ g.T, K + 1, dim=1),
        "triton-sweep-231": lambda: coir_kernels.mixed_rank_counts(
            (q, q.roll(1, 0), q.roll(2, 0)), g, sweep_weights(231).cuda(), positives, exclude, impl="triton"),
    }
    fn = sync_after(calls[provider], "cuda")
    fn()  # compile outside the timing
    benchmark(fn)
    derived_units(benchmark, provider, "cuda", torch.float16, parts=3 if "sweep" in provider else 1)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("gallery", [1_000_000, 10_000_000])
@pytest.mark.parametrize("provider", ["triton-rank", "triton-topk", "torch-mm-topk"])
def bench_large_gpu_own_process(benchmark, provider, gallery):
    run_job(benchmark, rounds=2, provider=provider, queries=10_000, gallery=gallery, dtype="fp16",
            device="cuda")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "--benchmark-only"]))
