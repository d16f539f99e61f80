"""Tables of a run's similarity study (the `similarity_study` block,
harness/similarity/study.py) and of the same study over seeds, from result files only."""

from __future__ import annotations

import statistics

from tabulate import tabulate


def _setting(setting: dict) -> str:
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in setting.items())


def _paired(pair: dict) -> str:
    low, high = pair["interval"]
    return f"{pair['difference']:+.2f} [{low:+.1f}, {high:+.1f}]"


def similarity_markdown(block: dict) -> list[str]:
    """Lines: where methods were tuned and reported, the bank, every method's metrics on the
    evaluation half with the paired interval against cosine, and the settings chosen."""
    metrics, key = block["metrics"], block["headline"]
    rows = [[r["method"], *(r["metrics"][m] for m in metrics), _paired(r["minus_cosine"][key]), _setting(r["setting"])]
            for r in block["rows"]]
    bank = block["bank"]
    lines = ["### Similarity methods (how the composed query meets the gallery)", "",
             f"- hyperparameters tuned for **{key}** on {block['tuning']['rule']} ({block['tuning']['queries']} "
             f"queries), reported on {block['evaluation']['rule']} ({block['evaluation']['queries']} queries)",
             f"- query bank: {bank['rule']}",
             *([f"- mixed query: weights {tuple(block['mixed_weights'])} (the mixing step's best {key} on tuning)"]
               if block.get("mixed_weights") else []),
             f"- intervals: {block['intervals']}", "",
             tabulate(rows, headers=["method", *metrics, f"{key} minus cosine [95%]", "setting (tuned)"],
                      tablefmt="github", floatfmt=".2f"), ""]
    return lines


def seeds_similarity(blocks: list[dict]) -> dict:
    """Over seeds: each method's mean and sample sd of every metric and of its difference
    from cosine, and on how many seeds its paired interval lay wholly above / below 0."""
    first = blocks[0]
    out = {"headline": first["headline"], "metrics": first["metrics"], "seeds": len(blocks), "rows": []}
    for i, row in enumerate(first["rows"]):
        per_seed = [b["rows"][i] for b in blocks]
        if any(r["method"] != row["method"] for r in per_seed):
            raise ValueError("the seeds' similarity studies do not hold the same methods in the same order")
        summary = {"method": row["method"], "mean": {}, "sd": {}, "difference_mean": {}, "difference_sd": {},
                   "seeds_above": {}, "seeds_below": {}}
        for m in first["metrics"]:
            values = [r["metrics"][m] for r in per_seed]
            deltas = [r["minus_cosine"][m]["difference"] for r in per_seed]
            summary["mean"][m], summary["sd"][m] = statistics.fmean(values), statistics.stdev(values)
            summary["difference_mean"][m], summary["difference_sd"][m] = statistics.fmean(deltas), statistics.stdev(deltas)
            summary["seeds_above"][m] = sum(r["minus_cosine"][m]["interval"][0] > 0 for r in per_seed)
            summary["seeds_below"][m] = sum(r["minus_cosine"][m]["interval"][1] < 0 for r in per_seed)
        out["rows"].append(summary)
    return out


def seeds_similarity_markdown(summary: dict) -> list[str]:
    key, n = summary["headline"], summary["seeds"]
    rows = [[r["method"], *(f"{r['mean'][m]:.2f} ± {r['sd'][m]:.2f}" for m in summary["metrics"]),
             f"{r['difference_mean'][key]:+.2f} ± {r['difference_sd'][key]:.2f}",
             f"{r['seeds_above'][key]} / {r['seeds_below'][key]}"] for r in summary["rows"]]
    return [f"Similarity methods over {n} seeds (evaluation half; mean ± sample sd):", "",
            tabulate(rows, headers=["method", *summary["metrics"], f"{key} minus cosine",
                                    f"seeds beyond noise (above / below, of {n})"], tablefmt="github"), ""]
