"""Scoring benches that are too large for a pytest run, all of them in one results file.

    python -m benches.scoring_suite --plan cpu --out results/reference/scoring_cpu.json
    python -m benches.scoring_suite --plan gpu --out $OUT/scoring_gpu.json   # on a GPU

On the CPU each measurement runs in a process of its own (benches/scoring_job.py:
faiss's and torch's OpenMP pools fight in one process). The GPU plan has no faiss
and runs its jobs one after another in this process: a process start (CUDA set-up)
per job would cost more than most of its jobs. The results file is rewritten after
every job, so a run stopped by a time limit keeps what it measured. It is what
BENCHMARKS.md is generated from (`python -m harness.report`). A row whose provider is
`computed-shards` runs nothing: its figures are arithmetic from stated machine figures
(benches/shard_plan.py), and the report labels it computed.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from benches.shard_plan import COMPUTED, computed_row
from coir_kernels import gemm, openblas_avx512
from harness.core import provenance
from harness.core.atomic import write_json

CIRR = dict(queries=4181, gallery=2297)
REPO = Path(__file__).resolve().parent.parent

# faiss as installed, and (where the CPU has AVX-512) given the AVX-512 kernels our
# fp32 path may take (coir_kernels/openblas_avx512.py): both peers, both compared.
CPU_FAISS = ("faiss", *(() if openblas_avx512.missing_flags(gemm.cpu_flags()) else ("faiss-avx512",)))
# (label, job arguments); every job of a label scores the same problem
PLANS = {
    "cpu": [
        *[("CIRR size", dict(provider=p, repeat=5, **CIRR))
          for p in ("reference-rank", "two-stage-rank", "torch-mm-topk", *CPU_FAISS)],
        *[("10k x 100k", dict(provider=p, repeat=3, queries=10_000, gallery=100_000))
          for p in ("reference-rank", "two-stage-rank", "torch-mm-topk", *CPU_FAISS)],
        *[("10k x 1M", dict(provider=p, queries=10_000, gallery=1_000_000))
          for p in ("reference-rank", "two-stage-rank", "torch-mm-topk", *CPU_FAISS)],
        *[(f"sweep {n} triples, CIRR size", dict(provider=p, triples=n, **CIRR))
          for n in (1, 66, 231) for p in ("reference-sweep", "two-stage-sweep", "recompute-sweep")],
    ],
    "gpu": [  # cheapest first: a time limit cuts the largest problems, not the rest
        # computed, not measured (benches/shard_plan.py): a gallery split over 8 GPUs
        ("10k x 100M fp16 over 8 H200 (computed)", dict(provider=COMPUTED, queries=10_000, gallery=100_000_000,
                                                       ranks=8, machine="H200", dtype="fp16")),
        *[("CIRR size fp16", dict(provider=p, dtype="fp16", device="cuda", repeat=20, **CIRR))
          for p in ("triton-rank", "two-stage-rank", "triton-topk", "torch-mm-topk")],
        *[(f"sweep {n} triples, CIRR size fp16", dict(provider=p, triples=n, dtype="fp16", device="cuda",
                                                       repeat=5, **CIRR))
          for n in (1, 66, 231) for p in ("triton-sweep", "recompute-sweep")],
        *[("BLIP-2 max-sim 32x32 tokens, CIRR size fp16",
           dict(provider=p, tokens=32, dtype="fp16", device="cuda", repeat=3, **CIRR))
          for p in ("triton-rank", "reference-rank")],
        *[("10k x 1M fp16", dict(provider=p, dtype="fp16", device="cuda", repeat=3, queries=10_000,
                                 gallery=1_000_000))
          for p in ("triton-rank", "two-stage-rank", "triton-topk", "torch-mm-topk")],
        *[("10k x 10M fp16", dict(provider=p, dtype="fp16", device="cuda", repeat=2, queries=10_000,
                                  gallery=10_000_000))
          for p in ("triton-rank", "two-stage-rank", "triton-topk", "torch-mm-topk")],
    ],
    "smoke": [  # seconds: checks the plumbing (tests use it)
        *[("tiny", dict(provider=p, queries=50, gallery=300, dim=32))
          for p in ("reference-rank", "two-stage-rank", "torch-mm-topk")],
        ("tiny sweep", dict(provider="reference-sweep", queries=50, gallery=300, dim=32, triples=66)),
    ],
}


def job_command(arguments: dict) -> list[str]:
    command = [sys.executable, "-m", "benches.scoring_job"]
    for key, value in arguments.items():
        command += [f"--{key}", str(value)]
    return command


IN_PROCESS = {"gpu"}  # plans without faiss, whose jobs share one process


def run_job(arguments: dict, timeout: int, in_process: bool) -> dict:
    """One job's row (an "error" entry instead of its figures when it fails)."""
    if in_process:
        from benches import scoring_job

        try:
            return scoring_job.run(scoring_job.parse(job_command(arguments)[3:]))
        except Exception as err:  # noqa: BLE001 -- a failed job is a row, the plan goes on
            return {**arguments, "error": f"{type(err).__name__}: {err}"}
    try:
        done = subprocess.run(job_command(arguments), capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {**arguments, "error": f"timed out after {timeout} s"}
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
        return {**arguments, "error": done.stderr.strip()[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_plan(plan: str, only: str | None, timeout: int, out: Path, command: str = "") -> dict:
    result = {"kind": "scoring", "plan": plan, "command": command, "date": provenance.now(),
              "git": provenance.git_state(),
              "packages": provenance.package_versions(), "hardware": provenance.hardware(_device(plan)),
              "jobs_in_process": plan in IN_PROCESS, "rows": []}
    for label, arguments in PLANS[plan]:
        if only and only not in label:
            continue
        print(f"{label}: {arguments['provider']} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        if arguments["provider"] == COMPUTED:  # arithmetic from stated figures: nothing runs
            row = {"label": label, **computed_row(**arguments)}
            print(f"  computed: {row['seconds_per_rank']:.4f} s per rank", file=sys.stderr, flush=True)
        else:
            row = {"label": label, **run_job(arguments, timeout, plan in IN_PROCESS),
                   "process_seconds": time.perf_counter() - started}
            if "error" not in row:
                print(f"  {row['seconds']:.3f} s, recall {row['recall']}", file=sys.stderr, flush=True)
        result["rows"].append(row)
        write_json(out, result)  # after every job: a time limit keeps what was measured
    return result


def _device(plan: str):
    import torch

    return torch.device("cuda" if plan == "gpu" else "cpu")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benches.scoring_suite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", choices=list(PLANS), default="cpu")
    parser.add_argument("--out", required=True, help="results JSON to write")
    parser.add_argument("--only", help="run only the jobs whose label contains this")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per job")
    args = parser.parse_args(argv)
    command = "python -m benches.scoring_suite " + shlex.join(argv if argv is not None else sys.argv[1:])
    result = run_plan(args.plan, args.only, args.timeout, Path(args.out), command)
    failed = [row for row in result["rows"] if "error" in row]
    print(f"wrote {args.out}: {len(result['rows'])} jobs, {len(failed)} failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
