"""Rerun every result in results/reference, in order, then rebuild BENCHMARKS.md.

    python -m benches.regenerate_reference            # about an hour on 2 CPU cores
    python -m benches.regenerate_reference --list     # the commands, run nothing
    python -m benches.regenerate_reference --missing  # only the jobs whose result files are gone

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
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from harness.config import RunConfig
from harness.over_seeds import argv_for_seed, seeds_file_name
from harness.pipeline import result_stem
from harness.run import build_parser

OUT = "results/reference"
RUN = ["harness.run", "--out", OUT, "--no-cache"]


def run_stem(arguments: list[str]) -> str:
    """The results-file stem `python -m harness.run ARGUMENTS` writes."""
    return result_stem(RunConfig.from_cli(build_parser().parse_args(arguments)))


def seeds_file(arguments: list[str], seeds: list[int]) -> str:
    """The file `python -m harness.run ARGUMENTS --seeds SEEDS` writes over the seeds."""
    return f"{OUT}/{seeds_file_name(RunConfig.from_cli(build_parser().parse_args(arguments)), seeds)}"


FIVE = [0, 1, 2, 3, 4]
THREE = [0, 1, 2]
DEFAULT = RUN[1:]
DEFAULT_CHECKPOINT = f"{OUT}/checkpoints/{run_stem(DEFAULT)}"  # seed 0's
# CoVR's recipe (frozen vision side, HN-NCE, lr 1e-4) from the default checkpoint: the seed
# presentation's batch-size finding in miniature.
FROM_DEFAULT = ["--checkpoint", DEFAULT_CHECKPOINT, "--train", "--recipe", "covr", "--deepspeed", "none",
                "--epochs", "1", "--max-train-queries", "8000", "--threads", "2"]
WEBVID = ["--suite", "webvid-covr"]
WEBVID_CHECKPOINT = f"{OUT}/checkpoints/{run_stem([*DEFAULT, *WEBVID])}"  # seed 0's
# every similarity method and the mixing sweep, tuned on half of each split, over seeds
SIMILARITY = ["--similarity", "all", "--mix", "sweep"]
SIMILARITY_CHECKPOINT = f"{OUT}/checkpoints/{run_stem([*DEFAULT, *SIMILARITY])}"  # seed 0's
# the second stage: a cross-encoder trained on the first stage's hard negatives, fused with it
RERANK = ["--rerank", "blip-itm", "--rerank-fusion", "tuned"]
# the default before it trained under bf16 autocast on CPUs with native bf16 (harness/core/
# precision.py), for 5 epochs: fp32 throughout and 6 epochs, as the tiny recipe was swept
FP32 = ["--precision", "fp32", "--epochs", "6"]
BATCH_16 = [*FROM_DEFAULT, "--batch-size", "16"]
BATCH_256 = [*FROM_DEFAULT, "--batch-size", "256", "--grad-cache-chunk", "64"]
# the zero-shot and CLIP4Cir baselines on the tiny CLIP (issue 25)
CLIP_COMPOSERS = ("sum", "pic2word", "combiner")


def with_seeds(arguments: list[str], seeds: list[int]) -> list[str]:
    return [*RUN, *arguments, "--seeds", *map(str, seeds)]


# (what, module and arguments), in the order they run: the default run first (later jobs
# start from its seed-0 checkpoint), then the timings while the machine has nothing else
# to do, then the other runs (their metrics do not depend on the load)
JOBS: list[tuple[str, list[str]]] = [
    ("the default run (blip-tiny trained on shapes), seeds 0-4", with_seeds([], FIVE)),
    ("the default run as it was (fp32, 6 epochs), seeds 0-4, right after it", with_seeds(FP32, FIVE)),
    ("the default run against it as it was, paired over the same queries",
     ["harness.compare", seeds_file([], FIVE), seeds_file(FP32, FIVE),
      "--out", f"{OUT}/comparison_default_vs_fp32_6_epochs.json"]),
    ("the recipe before (tiny-v1), seeds 0-4", with_seeds(["--recipe", "tiny-v1"], FIVE)),
    ("training-step profile", ["benches.train_profile", "--out", OUT]),
    ("scoring against peers, CPU plan", ["benches.scoring_suite", "--plan", "cpu", "--out", f"{OUT}/scoring_cpu.json"]),
    ("the mixing sweep at CIRR size", ["harness.mix_timing", "--checkpoint", DEFAULT_CHECKPOINT, "--repeats", "3",
                                       "--threads", "2", "--out", f"{OUT}/mix_timing_cirr_val_cpu.json"]),
    ("real-size embedding throughput", ["harness.throughput", "--out", f"{OUT}/throughput_cpu.json",
                                        "--precision", "fp32", "--batch-size", "2", "--repeats", "2"]),
    ("every mixing mode on the default checkpoint",
     [*RUN, "--checkpoint", DEFAULT_CHECKPOINT, "--no-train", "--mix", "sweep", "learn", "median", "max"]),
    ("WebVid-CoVR (generated clips): blip-tiny trained on train, test scored, seeds 0-2", with_seeds(WEBVID, THREE)),
    ("every mixing mode on WebVid-CoVR's seed-0 checkpoint",
     [*RUN, *WEBVID, "--checkpoint", WEBVID_CHECKPOINT, "--no-train", "--mix", "sweep", "median", "max"]),
    ("CoVR's recipe from the default checkpoint, batch 16, seeds 0-2", with_seeds(BATCH_16, THREE)),
    ("the same, batch 256 through gradient caching, seeds 0-2", with_seeds(BATCH_256, THREE)),
    ("batch 256 against batch 16, paired over the same queries",
     ["harness.compare", seeds_file(BATCH_256, THREE), seeds_file(BATCH_16, THREE),
      "--out", f"{OUT}/comparison_batch256_vs_batch16.json"]),
    ("every similarity method beside cosine, with the mixing sweep, on shapes, seeds 0-2",
     with_seeds(SIMILARITY, THREE)),
    ("the similarity methods' cost at CIRR size",
     ["harness.similarity_timing", "--checkpoint", SIMILARITY_CHECKPOINT, "--repeats", "3", "--threads", "2",
      "--out", f"{OUT}/similarity_timing_cirr_val_cpu.json"]),
    *[(f"every similarity method beside cosine, with the mixing sweep, on generated {suite}, seeds 0-2",
       with_seeds(["--suite", suite, *SIMILARITY], THREE)) for suite in ("fashioniq", "circo", "webvid-covr")],
    ("two stages: blip-itm trained on hard negatives re-ranks the default run's top 50, seeds 0-2",
     with_seeds(RERANK, THREE)),
    *[(f"clip-tiny (pre-trained on generated image-caption pairs) composing with {composer} on generated {suite}, "
       "seeds 0-2", with_seeds(["--backbone", "clip-tiny", "--suite", suite, "--composer", composer], THREE))
      for suite in ("shapes", "fashioniq", "circo") for composer in CLIP_COMPOSERS],
]
REPORT = ["harness.report", OUT, "--out", "BENCHMARKS.md"]


def recorded_command(job: list[str]) -> str:
    """The `command` a result file records for this job."""
    return f"python -m {job[0]} " + shlex.join(job[1:])


def recorded_commands(job: list[str]) -> list[str]:
    """Every `command` the result files of a job record: a --seeds run writes one
    file per seed (its own --seed N command, harness/over_seeds.py) and the summary."""
    if "--seeds" not in job:
        return [recorded_command(job)]
    seeds = [int(t) for t in job[job.index("--seeds") + 1:]]
    return [recorded_command(job), *(recorded_command([job[0], *argv_for_seed(job[1:], s)]) for s in seeds)]


def recorded_in(folder: Path) -> set[str]:
    """The commands the result files of `folder` record."""
    return {json.loads(path.read_text()).get("command") for path in folder.glob("*.json")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benches.regenerate_reference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="print the commands and stop")
    parser.add_argument("--missing", action="store_true",
                        help="run only the jobs with a result file missing (after deleting the results a change "
                             "makes stale), then the report")
    args = parser.parse_args(argv)
    present = recorded_in(Path(OUT)) if args.missing else set()
    for what, job in [*JOBS, ("BENCHMARKS.md", REPORT)]:
        print(f"# {what}\n{recorded_command(job)}", flush=True)
        if args.list:
            continue
        if job is not REPORT and set(recorded_commands(job)) <= present:
            print("# kept: every result file of this job is there", flush=True)
            continue
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", *job])
        print(f"# rc={done.returncode} after {time.perf_counter() - started:.0f} s", flush=True)
        if done.returncode != 0:
            return done.returncode
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
