"""Runs that differ only by their seed: one sample each of the same recipe.

A training run's figure moves with the seed (and with the CPU's floating-point
path), so a table shows a recipe's seeds together: mean and sample standard
deviation per metric, and each seed's value. Runs are grouped by the hash of their
config with the seed set aside (`RunConfig.seedless_hash`).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from tabulate import tabulate

from harness.config import RunConfig


def seedless_key(result: dict) -> tuple | None:
    """What a run computes, but for its seed; None for results that are not runs."""
    if "config" not in result or "protocol" not in result:
        return None
    return (result["protocol"]["suite"], result["protocol"]["split"],
            RunConfig.from_dict(result["config"]).seedless_hash())


def group_by_seed(results: list[tuple[Path, dict]]) -> dict[int, list[tuple[Path, dict]]]:
    """{position of a group's first run in `results`: its runs, by seed}; every run
    result is in exactly one group (often of one)."""
    groups: dict[tuple, list[int]] = {}
    for i, (_, result) in enumerate(results):
        key = seedless_key(result)
        if key is not None:
            groups.setdefault(key, []).append(i)
    return {members[0]: sorted((results[i] for i in members), key=lambda item: item[1]["seed"])
            for members in groups.values()}


def spread_markdown(group: list[tuple[Path, dict]]) -> list[str]:
    """Mean ± sd over the seeds of every metric of every method, and each seed's
    values of the first metric; nothing for a single seed."""
    if len(group) < 2 or not all(result.get("metrics") for _, result in group):
        return []
    seeds = [result["seed"] for _, result in group]
    first = group[0][1]["metrics"]
    columns = list(next(iter(first.values())))
    rows = []
    for method in first:
        values = [[result["metrics"][method][c] for _, result in group] for c in columns]
        rows.append([method, *(f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}" for v in values)])
    lead = columns[0]
    per_seed = [f"seed {s}: {result['metrics'][m][lead]:.2f}" for m in list(first)[:1]
                for s, (_, result) in zip(seeds, group)]
    return [
        f"Over {len(seeds)} seeds ({', '.join(map(str, seeds))}; mean ± sample sd; each seed one "
        f"training run, the same machine): {next(iter(first))} {lead} " + ", ".join(per_seed) + ".",
        "",
        tabulate(rows, headers=["method", *columns], tablefmt="github"),
        "",
        "result files: " + ", ".join(f"`{path.as_posix()}`" for path, _ in group),
        "",
    ]
