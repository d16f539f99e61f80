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
from harness.reports.rerank import rerank_over_seeds
from harness.reports.similarity import seeds_similarity, seeds_similarity_markdown


def seedless_key(result: dict) -> tuple | None:
    """What a run computes, but for its seed; None for results that are not runs."""
    if "config" not in result or "protocol" not in result or result.get("kind"):
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


def seed_summary(metrics_per_seed: list[dict[str, dict[str, float]]]) -> dict:
    """{method: {metric: {"mean", "sd", "min", "max", "values"}}} over seeds (sample sd)."""
    first = metrics_per_seed[0]
    out = {}
    for method, metrics in first.items():
        out[method] = {}
        for name in metrics:
            values = [m[method][name] for m in metrics_per_seed]
            out[method][name] = {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1
                                 else 0.0, "min": min(values), "max": max(values), "values": values}
    return out


def _summary_rows(summary: dict) -> tuple[list[str], list[list]]:
    columns = list(next(iter(summary.values())))
    rows = [[method, *(f"{m[c]['mean']:.2f} ± {m[c]['sd']:.2f}" for c in columns)] for method, m in summary.items()]
    return columns, rows


def _per_seed_lines(seeds: list[int], metrics: list[dict], intervals: list[dict | None]) -> list[str]:
    """Each seed's composed value of the first metric, with its bootstrap interval."""
    method = next(iter(metrics[0]))
    lead = next(iter(metrics[0][method]))
    cells = []
    for seed, m, interval in zip(seeds, metrics, intervals):
        low_high = (interval or {}).get("bootstrap", {}).get(method, {}).get(lead)
        cells.append(f"seed {seed}: {m[method][lead]:.2f}" + (f" [{low_high[0]:.1f}, {low_high[1]:.1f}]"
                                                               if low_high else ""))
    return [f"{method} {lead} per seed (95% bootstrap interval over queries where recorded): " + ", ".join(cells)
            + "."]


def spread_markdown(group: list[tuple[Path, dict]]) -> list[str]:
    """Mean ± sd over the seeds of every metric of every method, and each seed's
    values of the first metric; nothing for a single seed."""
    if len(group) < 2 or not all(result.get("metrics") for _, result in group):
        return []
    seeds = [result["seed"] for _, result in group]
    columns, rows = _summary_rows(seed_summary([result["metrics"] for _, result in group]))
    return [
        f"Over {len(seeds)} seeds ({', '.join(map(str, seeds))}; mean ± sample sd; each seed one "
        "training run, the same machine):",
        "",
        tabulate(rows, headers=["method", *columns], tablefmt="github"),
        "",
        *_per_seed_lines(seeds, [r["metrics"] for _, r in group], [r.get("intervals") for _, r in group]),
        "",
        *(seeds_similarity_markdown(seeds_similarity([r["similarity_study"] for _, r in group]))
          if all(r.get("similarity_study") for _, r in group) else []),
        *rerank_over_seeds([r for _, r in group]),
        "result files: " + ", ".join(f"`{path.as_posix()}`" for path, _ in group),
        "",
    ]


def seeds_markdown(summary: dict) -> str:
    """A `--seeds` results file (harness/over_seeds.py) as markdown."""
    p = summary["protocol"]
    seeds = summary["seeds"]
    head = (f"{p['suite']} / {p['split']}, {summary['backbone']['name']}, over {len(seeds)} seeds "
            f"({', '.join(map(str, seeds))}); mean ± sample sd; each seed one training run")
    if not summary.get("summary"):
        return head + "\n"
    columns, rows = _summary_rows(summary["summary"])
    runs = summary["runs"]
    times = ", ".join(f"{r['total_seconds']:.0f}" for r in runs)
    similarity = seeds_similarity_markdown(summary["similarity_study"]) if summary.get("similarity_study") else []
    return "\n".join([
        head, "", tabulate(rows, headers=["method", *columns], tablefmt="github"), "",
        *_per_seed_lines(seeds, [r["metrics"] for r in runs], [r.get("intervals") for r in runs]), "",
        *similarity,
        *rerank_over_seeds(runs),
        f"whole run per seed (s): {times}",
        "result files: " + ", ".join(r["result_file"] for r in runs), "",
    ])
