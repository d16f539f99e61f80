"""python -m harness.compare: is one recipe better than another beyond the noise?

    python -m harness.compare A_seeds-0-1-2.json B_seeds-0-1-2.json --out comparison.json

A and B are `--seeds` results files (harness/over_seeds.py) of the same split. For
each seed both ran, the composed query's per-query values of the two runs (their
`.queries.jsonl` files, beside the results) are paired by pair id, and the paired
bootstrap interval of A minus B is computed (harness/evaluation/intervals.py): the
query noise. Over the seeds, the difference's mean and sample sd: the training
noise. The verdict counts the seeds whose interval excludes 0 on the side of the
mean; an effect holds when every seed agrees and the mean exceeds twice the sd.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from harness.core import provenance
from harness.core.atomic import write_json, write_text
from harness.core.errors import HarnessError
from harness.evaluation.embed import COMPOSED
from harness.evaluation.intervals import DESCRIPTION, over_seeds, paired
from harness.evaluation.per_query import paired_values
from harness.reports.comparison import comparison_markdown


def _runs_by_seed(path: Path, summary: dict) -> dict[int, Path]:
    """{seed: per-query file} of a --seeds results file."""
    if summary.get("kind") != "seeds":
        raise HarnessError(f"{path} is not a --seeds results file (python -m harness.run --seeds ...)")
    out = {}
    for run in summary["runs"]:
        result_path = path.parent / run["result_file"]
        if not result_path.is_file():
            raise HarnessError(f"{result_path} (seed {run['seed']} of {path.name}) is missing")
        per_query = json.loads(result_path.read_text()).get("per_query_file")
        if not per_query:
            raise HarnessError(f"{result_path} has no per-query file: rerun it with this version of the harness")
        out[run["seed"]] = result_path.parent / per_query
    return out


def compare(path_a: Path, path_b: Path, method: str = COMPOSED) -> dict:
    summary_a, summary_b = (json.loads(Path(p).read_text()) for p in (path_a, path_b))
    runs_a, runs_b = _runs_by_seed(Path(path_a), summary_a), _runs_by_seed(Path(path_b), summary_b)
    seeds = sorted(set(runs_a) & set(runs_b))
    if len(seeds) < 2:
        raise HarnessError(f"{path_a} and {path_b} share {len(seeds)} seed(s); compare needs two or more")
    per_seed = []
    for seed in seeds:
        values_a, values_b = paired_values(runs_a[seed], runs_b[seed], method)
        per_seed.append({"seed": seed, "paired": paired(values_a, values_b)})
    metrics = list(per_seed[0]["paired"])
    difference = {}
    for metric in metrics:
        difference[metric] = over_seeds([s["paired"][metric] for s in per_seed])
    return {
        "kind": "comparison",
        "date": provenance.now(),
        "command": None,
        "method": method,
        "intervals": DESCRIPTION,
        "a": _side(path_a, summary_a),
        "b": _side(path_b, summary_b),
        "seeds": seeds,
        "per_seed": per_seed,
        "difference": difference,
        "git": provenance.git_state(),
        "packages": provenance.package_versions(),
        "hardware": summary_a["hardware"],
    }


def _side(path: Path, summary: dict) -> dict:
    return {"file": Path(path).name, "command": summary["command"],
            "summary": {m: {k: v["mean"] for k, v in metrics.items()} for m, metrics in summary["summary"].items()},
            "sd": {m: {k: v["sd"] for k, v in metrics.items()} for m, metrics in summary["summary"].items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, help="--seeds results file of recipe A")
    parser.add_argument("b", type=Path, help="--seeds results file of recipe B (A minus B is reported)")
    parser.add_argument("--out", type=Path, help="write the comparison JSON here (and .md beside it)")
    args = parser.parse_args(argv)
    try:
        result = compare(args.a, args.b)
        result["command"] = "python -m harness.compare " + shlex.join(argv if argv is not None else sys.argv[1:])
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = comparison_markdown(result)
    if args.out:
        write_json(args.out, result)
        write_text(args.out.with_suffix(".md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
