"""How long the mixing sweep takes at CIRR size: the real CIRR annotations of a split
(val: 4,181 queries over 2,297 images) with small stand-in images (NLVR2 is not
redistributable; ranking time does not depend on the pixels), embedded by a tiny
checkpoint, then the 231-triple sweep timed, written as a result file that
BENCHMARKS.md is built from.

    python -m harness.mix_timing --checkpoint results/reference/checkpoints/<run> \\
        --out results/reference/mix_timing_cirr_val_cpu.json

Rows: "gallery ranks" = coir_kernels.mixed_rank_counts alone (every triple's rank counts of
every positive over the gallery); "every CIRR metric" = the whole sweep of
harness/mixing/ (gallery ranks, image-set ranks of the 5 other members, R@K,
Rsubset@K and Avg per triple). The first call, which may compile the counting loops,
is reported on its own row; the others are the median and minimum of warm repeats.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from backbones import BACKBONES
from backbones.base import LoadOptions
from harness.core import provenance
from harness.core.atomic import write_json
from harness.evaluation.embed import embed_split
from harness.evaluation.protocols import ScoringRules
from harness.mixing.adapters import MIXERS
from harness.mixing.adapters.base import mixed_counts
from harness.mixing.grid import best_index, simplex_grid
from harness.mixing.parts import make_part
from harness.mixing.sweep import sweep_metrics
from harness.suites.cirr import CirrSuite
from harness.suites.cirr_standin import VENDORED_ANNOTATIONS, standin_root


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    """(first call's seconds, seconds of each further call)."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    warm = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        warm.append(time.perf_counter() - start)
    return first, warm


def measure(annotations: Path, split: str, checkpoint: str | None, step: float, repeats: int,
            workdir: Path) -> dict:
    data = CirrSuite(standin_root(annotations, workdir, [split])).load(split)
    backbone = BACKBONES.get("blip-tiny").load(LoadOptions(checkpoint, None, None, None, 0), torch.device("cpu"))
    start = time.perf_counter()
    emb = embed_split(backbone, data, torch.device("cpu"), "fp32", 256)
    embed_seconds = time.perf_counter() - start
    mixer = MIXERS.get("cirr")
    part = make_part("evaluation", data, emb, mixer.merge)
    grid = simplex_grid(step)
    labels = mixer.labels(part)

    def gallery_ranks():  # coir_kernels.mixed_rank_counts, on the gallery as the protocol scores it
        return mixed_counts(part.parts, part.gallery, grid, labels.positives, labels.reference)

    def every_metric():
        return sweep_metrics(part, grid, mixer, ScoringRules(convention="covr", tie_rule="pessimistic"))

    sizes = {"triples": grid.shape[0], "queries": len(data.queries), "gallery_images": len(data.gallery)}
    rows = []
    for what, fn in (("gallery ranks (coir_kernels.mixed_rank_counts)", gallery_ranks),
                     ("every CIRR metric (mixing.sweep.sweep_metrics)", every_metric)):
        first, warm = timed(fn, repeats)
        rows.append({"what": f"{what}, first call", **sizes, "median_seconds": first,
                     "min_seconds": first, "repeats": 1})
        rows.append({"what": what, **sizes, "median_seconds": statistics.median(warm),
                     "min_seconds": min(warm), "repeats": len(warm), "seconds": warm})
    sweep = every_metric()
    best = best_index(sweep["Avg"])
    return {
        "rows": rows,
        "embedding_seconds": embed_seconds,
        "backbone": {"name": backbone.name, "checkpoint": backbone.checkpoint_id,
                     "checkpoint_sha256": backbone.checkpoint_sha256},
        "protocol": {"suite": "cirr", "split": split, **sizes, "step": step,
                     "annotations": data.provenance, "images": "stand-in, 16 px, colours from the id"},
        # Not a result about CIRR (stand-in images): shown only to prove the sweep is complete.
        "sanity": {"best_avg_triple": grid[best].tolist(), "f_alone_avg": sweep["Avg"][-1]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.mix_timing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", type=Path, default=VENDORED_ANNOTATIONS,
                        help="folder with captions/ and image_splits/ (default: the copy in tests/data/cirr)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--checkpoint", help="a blip-tiny transformers directory (default: random weights, seed 0)")
    parser.add_argument("--step", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--note", help="conditions worth stating (e.g. a shared, loaded machine)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="cirr-standin-") as workdir:
        measured = measure(args.annotations, args.split, args.checkpoint, args.step, args.repeats, Path(workdir))
    # Other work on the machine slows every number: the 1-minute load average says how much.
    measured["load_average_1min"] = {"before": load_before, "after": os.getloadavg()[0]}
    for row in measured["rows"]:
        print(f"{row['what']}: {row['median_seconds']:.3f} s ({row['triples']} triples x {row['queries']} queries)")
    write_json(args.out, {
        "schema": 1, "kind": "mix_timing", "date": provenance.now(),
        "command": "python -m harness.mix_timing " + shlex.join(argv if argv is not None else sys.argv[1:]),
        **measured, "note": args.note,
        "git": provenance.git_state(), "packages": provenance.package_versions(),
        "hardware": provenance.hardware(torch.device("cpu")),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
