"""`--seeds 0 1 2 3 4`: the whole pipeline once per seed, then one results file over
them. A training run is one sample of its recipe; the file keeps every seed's
metrics and bootstrap intervals, and the mean and sample standard deviation over
seeds of every metric of every method (harness/reports/seeds.py). Each seed also
writes its own results file, the one `--seed N` would write, named in the summary."""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path

from harness.config import RunConfig
from harness.core import provenance
from harness.core.atomic import write_json, write_text
from harness.core.errors import HarnessError
from harness.core.progress import say
from harness.pipeline import result_stem, run
from harness.reports.seeds import seed_summary, seeds_markdown
from harness.reports.similarity import seeds_similarity


def argv_for_seed(argv: list[str], seed: int) -> list[str]:
    """The command line of one seed's run: --seeds and --seed dropped, --seed N added."""
    out, skipping = [], False
    for token in argv:
        if token in ("--seeds", "--seed"):
            skipping = True
            continue
        if skipping and token.lstrip("-").isdigit():
            continue
        skipping = False
        out.append(token)
    return [*out, "--seed", str(seed)]


def seeds_file_name(config: RunConfig, seeds: list[int]) -> str:
    """The name of the file a --seeds run writes (one over all its seeds)."""
    return f"{result_stem(config, seedless=True)}_seeds-{'-'.join(map(str, seeds))}.json"


def run_seeds(config: RunConfig, seeds: list[int], argv: list[str] | None = None) -> dict | None:
    if len(set(seeds)) != len(seeds) or len(seeds) < 2:
        raise HarnessError(f"--seeds needs two or more different seeds, got {' '.join(map(str, seeds))}")
    argv = list(sys.argv[1:] if argv is None else argv)
    runs = []
    for i, seed in enumerate(seeds):
        say(f"seed {seed} ({i + 1} of {len(seeds)})")
        result = run(dataclasses.replace(config, seed=seed), argv_for_seed(argv, seed))
        if result is None:  # a torchrun rank other than 0: rank 0 writes
            return None
        runs.append(result)
    summary = summarize(config, seeds, runs, argv)
    path = write_json(Path(config.out) / seeds_file_name(config, seeds), summary)
    table = seeds_markdown(summary)
    write_text(path.with_suffix(".md"), table)
    print(table)
    say(f"results over {len(seeds)} seeds: {path}")
    return summary


def summarize(config: RunConfig, seeds: list[int], runs: list[dict], argv: list[str]) -> dict:
    first = runs[0]
    return {
        "schema": 1,
        "kind": "seeds",
        "date": provenance.now(),
        "command": "python -m harness.run " + shlex.join(argv),
        "config": {**config.to_dict(), "seed": None},
        "config_hash_seedless": config.seedless_hash(),
        "seeds": seeds,
        "protocol": first["protocol"],
        "backbone": {k: first["backbone"][k] for k in ("name", "embed_dim", "image_size", "parameters")},
        "runs": [{
            "seed": r["seed"],
            "result_file": f"{result_stem(dataclasses.replace(config, seed=r['seed']))}.json",
            "metrics": r["metrics"],
            "intervals": r.get("intervals"),
            "training_seconds": (r.get("training") or {}).get("seconds"),
            "loss_curve": (r.get("training") or {}).get("loss_curve"),
            "total_seconds": r["timings"]["total_seconds"],
            **({"rerank": {k: v for k, v in r["rerank"].items() if k != "training"}} if r.get("rerank") else {}),
        } for r in runs],
        "summary": seed_summary([r["metrics"] for r in runs]) if first.get("metrics") else None,
        **({"similarity_study": seeds_similarity([r["similarity_study"] for r in runs])}
           if first.get("similarity_study") else {}),
        "git": first["git"],
        "packages": first["packages"],
        "hardware": first["hardware"],
    }
