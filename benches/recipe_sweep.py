"""The sweep behind the `tiny` recipe: the default run (blip-tiny trained on shapes,
evaluated on shapes val) under several configurations, each over several seeds,
every run's results file kept, and one summary of them.

    python -m benches.recipe_sweep                       # every configuration, seeds 0 1 2
    python -m benches.recipe_sweep --only infonce-b128 --seeds 0 1 2 3 4
    python -m benches.recipe_sweep --summary             # the summary of what is there

Runs go to results/recipe_sweep/<configuration>/ (one results file per seed, made by
`python -m harness.run` with the configuration's flags and --seed); the summary,
results/recipe_sweep/summary.json, holds each configuration's flags, and per seed
composed / image-only / text-only R@1, the last epoch's loss, the training seconds
and the whole run's wall seconds. A run already there is not run again.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from harness.core import provenance
from harness.core.atomic import write_json

OUT = Path("results/recipe_sweep")
# name: flags on top of `python -m harness.run --no-cache --recipe tiny-v1`. The runs in
# results/recipe_sweep/ were made at commit 1c1dd7d, when `tiny` was what `tiny-v1` is now,
# without the --recipe flag; each results file records its whole config.
BASE = ["--recipe", "tiny-v1"]
CONFIGURATIONS = {
    "old-tiny": [*BASE],  # the recipe before this sweep: HN-NCE, batch 64, lr 1e-3, 3 epochs
    "hnnce-6ep": [*BASE, "--epochs", "6"],
    "infonce-b64-lr1e-3": [*BASE, "--hnnce-beta", "0", "--epochs", "6"],
    "infonce-b128-lr5e-4": [*BASE, "--hnnce-beta", "0", "--batch-size", "128", "--lr", "5e-4", "--warmup-steps",
                            "30", "--epochs", "6"],
    # chosen: the `tiny` recipe (harness/training/recipes.py)
    "infonce-b64-lr5e-4-warm300": [*BASE, "--hnnce-beta", "0", "--lr", "5e-4", "--warmup-steps", "300",
                                   "--epochs", "6"],
    "infonce-b128-lr1e-3-warm200": [*BASE, "--hnnce-beta", "0", "--batch-size", "128", "--warmup-steps", "200",
                                    "--epochs", "6"],
}


def run_dir(name: str) -> Path:
    return OUT / name


def results_of(name: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(run_dir(name).glob("*.json"))]


def has_seed(name: str, seed: int) -> bool:
    return any(r["seed"] == seed for r in results_of(name))


def run(name: str, seed: int) -> None:
    command = [sys.executable, "-m", "harness.run", "--no-cache", "--out", str(run_dir(name)),
               *CONFIGURATIONS[name], "--seed", str(seed)]
    print(f"# {name}, seed {seed}: {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    print(f"#   {time.perf_counter() - started:.0f} s", flush=True)


def summary() -> dict:
    rows = {}
    for name, flags in CONFIGURATIONS.items():
        seeds = []
        for r in sorted(results_of(name), key=lambda r: r["seed"]):
            m = r["metrics"]
            seeds.append({"seed": r["seed"], "composed R@1": m["composed f(q,t)"]["R@1"],
                          "image-only R@1": m["image-only q"]["R@1"], "text-only R@1": m["text-only t"]["R@1"],
                          "last loss": r["training"]["loss_curve"][-1], "train seconds": r["training"]["seconds"],
                          "wall seconds": r["timings"]["total_seconds"], "config_hash": r["config_hash"],
                          "commit": r["git"]["commit"], "dirty": r["git"]["dirty"]})
        values = [s["composed R@1"] for s in seeds]
        rows[name] = {"flags": flags, "seeds": seeds,
                      "composed R@1 mean": statistics.mean(values) if values else None,
                      "composed R@1 sd": statistics.stdev(values) if len(values) > 1 else None,
                      "composed R@1 min": min(values) if values else None}
    return {"kind": "recipe_sweep", "date": provenance.now(), "configurations": rows,
            "hardware": provenance.hardware(torch.device("cpu"))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benches.recipe_sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(CONFIGURATIONS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--summary", action="store_true", help="only write the summary of the runs there")
    args = parser.parse_args(argv)
    if not args.summary:
        for seed in args.seeds:  # seed-major: every configuration gets a first sample early
            for name in args.only or CONFIGURATIONS:
                if not has_seed(name, seed):
                    run(name, seed)
    result = summary()
    write_json(OUT / "summary.json", result)
    for name, row in result["configurations"].items():
        per_seed = ", ".join(f"{s['composed R@1']:.1f}" for s in row["seeds"])
        print(f"{name}: composed R@1 {per_seed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
