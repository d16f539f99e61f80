"""Rerun every result in results/reference, in order, then rebuild BENCHMARKS.md.

    python -m benches.regenerate_reference            # about 45 minutes on 2 CPU cores
    python -m benches.regenerate_reference --list     # the commands, run nothing

Run it from a clean commit (every result records the commit and `dirty`; the
results must say `dirty: false`): commit the code, delete the old result files,
run this, then commit results/reference/ and BENCHMARKS.md. A fresh clone can run
it as it is: runs that start from the default run's checkpoint come after it, and
the CIRR timing reads the annotations vendored in tests/data/cirr.
tests/test_reference_results.py checks that every file there was made by one of
these commands and that BENCHMARKS.md is what `python -m harness.report` writes from them.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time

from harness.config import RunConfig
from harness.run import build_parser

OUT = "results/reference"
RUN = ["harness.run", "--out", OUT, "--no-cache"]


def run_stem(arguments: list[str]) -> str:
    """The results-file stem `python -m harness.run ARGUMENTS` writes (harness/pipeline.py)."""
    config = RunConfig.from_cli(build_parser().parse_args(arguments))
    return f"{config.suite}_{config.split}_{config.backbone}_{config.config_id()}"


DEFAULT = RUN[1:]
DEFAULT_CHECKPOINT = f"{OUT}/checkpoints/{run_stem(DEFAULT)}"
# Batch 16 against 256 from random weights (the seed presentation's finding in miniature).
SMALL_BATCH = ["--threads", "1", "--max-train-queries", "8000"]
FROM_DEFAULT = ["--checkpoint", DEFAULT_CHECKPOINT, "--train", "--recipe", "covr", "--deepspeed", "none",
                "--epochs", "1", "--max-train-queries", "8000", "--threads", "2"]

# (what, module and arguments), in the order they run: the default run first (later jobs
# start from its checkpoint), then the timings while the machine has nothing else to
# do, then the other training runs (their metrics do not depend on the load)
JOBS: list[tuple[str, list[str]]] = [
    ("the default run (blip-tiny trained on shapes), seed 0", RUN),
    ("the default run, seed 1", [*RUN, "--seed", "1"]),
    ("the default run, seed 2", [*RUN, "--seed", "2"]),
    ("scoring against peers, CPU plan", ["benches.scoring_suite", "--plan", "cpu", "--out", f"{OUT}/scoring_cpu.json"]),
    ("the mixing sweep at CIRR size", ["harness.mix_timing", "--checkpoint", DEFAULT_CHECKPOINT, "--repeats", "3",
                                       "--threads", "2", "--out", f"{OUT}/mix_timing_cirr_val_cpu.json"]),
    ("real-size embedding throughput", ["harness.throughput", "--out", f"{OUT}/throughput_cpu.json",
                                        "--precision", "fp32", "--batch-size", "2", "--repeats", "2"]),
    ("the default run with every mixing mode", [*RUN, "--mix", "sweep", "learn", "median", "max"]),
    ("from random weights, batch 16", [*RUN, *SMALL_BATCH, "--batch-size", "16", "--lr", "5e-4",
                                       "--warmup-steps", "150"]),
    ("from random weights, batch 256", [*RUN, *SMALL_BATCH, "--batch-size", "256", "--lr", "2e-3",
                                        "--warmup-steps", "10"]),
    ("from random weights, batch 256 through gradient caching",
     [*RUN, *SMALL_BATCH, "--batch-size", "256", "--grad-cache-chunk", "64", "--lr", "2e-3", "--warmup-steps", "10"]),
    ("the same, lr 4e-3", [*RUN, *SMALL_BATCH, "--batch-size", "256", "--grad-cache-chunk", "64", "--lr", "4e-3",
                           "--warmup-steps", "10"]),
    ("CoVR's recipe from the default checkpoint, batch 16", [*RUN, *FROM_DEFAULT, "--batch-size", "16"]),
    ("CoVR's recipe from the default checkpoint, batch 256 through gradient caching",
     [*RUN, *FROM_DEFAULT, "--batch-size", "256", "--grad-cache-chunk", "64"]),
]
REPORT = ["harness.report", OUT, "--out", "BENCHMARKS.md"]


def recorded_command(job: list[str]) -> str:
    """The `command` a result file records for this job."""
    return f"python -m {job[0]} " + shlex.join(job[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benches.regenerate_reference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="print the commands and stop")
    args = parser.parse_args(argv)
    for what, job in [*JOBS, ("BENCHMARKS.md", REPORT)]:
        print(f"# {what}\n{recorded_command(job)}", flush=True)
        if args.list:
            continue
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", *job])
        print(f"# rc={done.returncode} after {time.perf_counter() - started:.0f} s", flush=True)
        if done.returncode != 0:
            return done.returncode
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
