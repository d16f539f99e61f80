"""Where a step of the default fine-tuning goes (blip-tiny on shapes, 2 CPU cores):
the whole loop's samples/s, and the optimizer step alone under each AdamW
implementation, since torch's CPU default (a loop over parameters) was found to
cost as much as the forward pass.

    python -m benches.train_profile --out OUT        # writes OUT/train_profile_cpu.json

Part 1 runs harness/training/loop.py's Trainer (the default recipe in the default
run's training precision, its first --steps steps of batch 64; one warm-up epoch of
--warmup steps first) and reports samples/s. Part 2 times AdamW.step over blip-tiny's
trainable parameters with random gradients for each implementation (per-tensor loop,
foreach, fused), median of --repeats. Also records the 1-minute load average: another process on the two
cores slows every small operation.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from harness.config import RunConfig
from harness.core import provenance
from harness.core.atomic import write_json
from harness.core.precision import training_precision
from harness.pipeline import load_splits, preflight, seed_everything
from harness.training.loop import fine_tune

OPTIMIZERS = {"per-tensor loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}


def loop_samples_per_second(steps: int, warmup: int) -> dict:
    config = RunConfig.resolve({})
    backbone_entry, suite = preflight(config)
    _, train = load_splits(config, suite)
    seed_everything(0)
    backbone = backbone_entry.load(config.load_options(), torch.device("cpu"))
    cpu = torch.device("cpu")
    precision = training_precision(config.precision, config.train_precision, cpu)  # the default run's
    out = {}
    for name, count in (("warm-up", warmup), ("timed", steps)):
        settings = RunConfig.resolve({"max_train_queries": config.batch_size * count, "epochs": 1}).training()
        out[name] = fine_tune(backbone, train, settings, cpu, precision, None).samples_per_second
    return {"steps": steps, "batch_size": config.batch_size, "precision": precision,
            "samples_per_second": out["timed"]}


def optimizer_step_ms(repeats: int) -> list[dict]:
    from backbones.blip_tiny import build_random

    params = build_random(seed=0).trainable_parameters(True)
    rows = []
    for name, options in OPTIMIZERS.items():
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05, **options)
        optimizer.step()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            optimizer.step()
            times.append(1000 * (time.perf_counter() - started))
        rows.append({"optimizer": name, "median_ms": statistics.median(times), "min_ms": min(times),
                     "parameters": sum(p.numel() for p in params), "tensors": len(params)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    result = {
        "kind": "train_profile",
        "date": provenance.now(),
        "command": "python -m benches.train_profile " + shlex.join(sys.argv[1:] if argv is None else argv),
        "loop": loop_samples_per_second(args.steps, args.warmup),
        "optimizer_step": optimizer_step_ms(args.repeats),
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "git": provenance.git_state(),
        "packages": provenance.package_versions(),
        "hardware": provenance.hardware(torch.device("cpu")),
    }
    path = write_json(args.out / "train_profile_cpu.json", result)
    print(f"loop {result['loop']['samples_per_second']:.0f} samples/s; optimizer step " +
          ", ".join(f"{r['optimizer']} {r['median_ms']:.1f} ms" for r in result["optimizer_step"]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
