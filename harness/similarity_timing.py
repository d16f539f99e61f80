"""What each similarity method costs beside cosine at CIRR size, measured side by side in
one process: the real CIRR annotations (val: 4,181 queries over 2,297 images; the bank:
test1's 4,148 composed queries) with small stand-in images (NLVR2 is not
redistributable; timing does not depend on the pixels), embedded by a tiny checkpoint.

    python -m harness.similarity_timing --checkpoint results/reference/checkpoints/<run> \\
        --out results/reference/similarity_timing_cirr_val_cpu.json

Per method, with its first setting (harness/similarity): "make" = building what the
protocol scores (offsets from the bank, re-made vectors, a score matrix), "score" =
the CIRR protocol's per-query values of every query from it; the ratio is the method's
make + score over cosine's score. Medians of warm repeats (the first call, which may
compile the counting loops, is run once before and not counted).
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
from harness.evaluation.embed import COMPOSED, embed_split
from harness.evaluation.protocols import PROTOCOLS, ScoringRules
from harness.evaluation.query_subset import query_subset
from harness.evaluation.reference_rule import excluded_indices, excluded_items
from harness.similarity import SIMILARITIES
from harness.similarity.settings import parse_methods
from harness.similarity.study import make_problem
from harness.suites.cirr import CirrSuite
from harness.suites.cirr_standin import VENDORED_ANNOTATIONS, standin_root
from harness.training.losses import contrastive_loss

BANK_SPLIT = "test1"


def median_seconds(fn, repeats: int) -> tuple[float, list[float]]:
    fn()  # warm: compiled counting loops, caches
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), seconds


def method_row(name: str, problem, repeats: int) -> dict:
    method = SIMILARITIES.get(name)
    setting = method.settings(problem)[0]
    protocol, rules, rows = PROTOCOLS.get("cirr"), ScoringRules(), list(range(len(problem.data.queries)))
    scoring = method.scoring(problem, setting)

    def score():
        return protocol.query_values(*query_subset(problem.data, scoring.emb, rows), rules)[COMPOSED]

    make, make_all = median_seconds(lambda: method.scoring(problem, setting), repeats)
    scored, score_all = median_seconds(score, repeats)
    return {"method": name, "setting": setting, "make_seconds": make, "score_seconds": scored,
            "make_repeats": make_all, "score_repeats": score_all}


def measure(annotations: Path, checkpoint: str | None, methods: list[str], repeats: int, workdir: Path) -> dict:
    suite = CirrSuite(standin_root(annotations, workdir, ["val", BANK_SPLIT]))
    data, bank_data = suite.load("val"), suite.load(BANK_SPLIT)
    backbone = BACKBONES.get("blip-tiny").load(LoadOptions(checkpoint, None, None, None, 0), torch.device("cpu"))
    start = time.perf_counter()
    emb = embed_split(backbone, data, torch.device("cpu"), "fp32", 256)
    bank = embed_split(backbone, bank_data, torch.device("cpu"), "fp32", 256).composed.float()
    embed_seconds = time.perf_counter() - start
    exclude = excluded_indices(excluded_items(data.queries, "remove"), {g: i for i, g in enumerate(emb.gallery_ids)})
    problem, _ = make_problem(data, emb, exclude, bank, 0, contrastive_loss("hn-nce", 0.07, 1.0, 0.0))
    rows = [method_row(name, problem, repeats) for name in methods]
    cosine = next(r for r in rows if r["method"] == "cosine")["score_seconds"]
    for row in rows:
        row["ratio_to_cosine"] = (row["make_seconds"] + row["score_seconds"]) / cosine
    return {
        "rows": rows, "embedding_seconds": embed_seconds,
        "backbone": {"name": backbone.name, "checkpoint": backbone.checkpoint_id,
                     "checkpoint_sha256": backbone.checkpoint_sha256},
        "protocol": {"suite": "cirr", "split": "val", "queries": len(data.queries), "gallery_images": len(data.gallery),
                     "bank": f"{BANK_SPLIT} composed queries ({bank.shape[0]})", "annotations": data.provenance,
                     "images": "stand-in, 16 px, colours from the id"},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.similarity_timing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", type=Path, default=VENDORED_ANNOTATIONS,
                        help="folder with captions/ and image_splits/ (default: the copy in tests/data/cirr)")
    parser.add_argument("--checkpoint", help="a blip-tiny transformers directory (default: random weights, seed 0)")
    parser.add_argument("--similarity", nargs="+", default=["all"], metavar="METHOD",
                        help="the methods to time (default all); cosine is always timed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = list(dict.fromkeys(["cosine", *parse_methods(args.similarity)]))
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="cirr-standin-") as workdir:
        measured = measure(args.annotations, args.checkpoint, methods, args.repeats, Path(workdir))
    measured["load_average_1min"] = {"before": load_before, "after": os.getloadavg()[0]}
    for row in measured["rows"]:
        print(f"{row['method']}: make {row['make_seconds']:.3f} s, score {row['score_seconds']:.3f} s, "
              f"{row['ratio_to_cosine']:.2f}x cosine")
    write_json(args.out, {
        "schema": 1, "kind": "similarity_timing", "date": provenance.now(),
        "command": "python -m harness.similarity_timing " + shlex.join(argv if argv is not None else sys.argv[1:]),
        **measured, "git": provenance.git_state(), "packages": provenance.package_versions(),
        "hardware": provenance.hardware(torch.device("cpu")),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
