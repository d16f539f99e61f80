"""Tables of a run's similarity study (the `similarity_study` block,
harness/similarity/study.py) and of the same study over seeds, from result files only."""

from __future__ import annotations

import statistics

from tabulate import tabulate

from harness.reports.header import section_header


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


def similarity_timing_section(path, result: dict) -> list[str]:
    """BENCHMARKS.md's section of a `python -m harness.similarity_timing` result."""
    p, load = result["protocol"], result.get("load_average_1min")
    rows = [[r["method"], _setting(r["setting"]), r["make_seconds"], r["score_seconds"], r["ratio_to_cosine"]]
            for r in result["rows"]]
    return [
        *section_header(
            f"Similarity methods' cost, {p['suite']} {p['split']} (real annotations, stand-in images), "
            f"{result['hardware']['device']}", result, path,
            machine_note=f"; load average (1 min) {load['before']:.1f} before, {load['after']:.1f} after" if load else "",
            remark=f"backbone {result['backbone']['name']} ({result['backbone']['checkpoint']})",
            lines=[f"- {p['queries']} queries over {p['gallery_images']} images; bank: {p['bank']}",
                   "- make: what the protocol scores (offsets from the bank, re-made vectors, a score matrix; "
                   "learned-linear: its fit); score: the CIRR protocol's per-query values of every query; "
                   "ratio: (make + score) / cosine's score; medians of warm repeats, side by side in one process"]),
        tabulate(rows, headers=["method", "setting", "make s", "score s", "x cosine"], tablefmt="github",
                 floatfmt=".3f"),
        "",
    ]


def across_suites_section(summaries: list[tuple[str, dict]]) -> list[str]:
    """One table over suites: each method's headline difference from cosine (mean ± sd over
    seeds) and on how many seeds its paired interval lay wholly above / below 0."""
    if not summaries:
        return []
    methods = list(dict.fromkeys(r["method"] for _, s in summaries for r in s["rows"]))
    columns = [f"{suite}: {s['headline']} minus cosine" for suite, s in summaries]
    rows = []
    for method in methods:
        cells = []
        for _, s in summaries:
            row = next((r for r in s["rows"] if r["method"] == method), None)
            key = s["headline"]
            cells.append("" if row is None else f"{row['difference_mean'][key]:+.2f} ± {row['difference_sd'][key]:.2f} "
                                                 f"({row['seeds_above'][key]}↑ {row['seeds_below'][key]}↓ of {s['seeds']})")
        rows.append([method, *cells])
    return ["## Similarity methods across suites", "",
            "Each suite's headline metric on the evaluation half, the method minus cosine on the same queries: "
            "mean ± sample sd over seeds (each seed one training run), and on how many seeds the paired 95% "
            "interval lay wholly above (↑) or below (↓) 0. The runs' sections above hold every metric.", "",
            tabulate(rows, headers=["method", *columns], tablefmt="github"), ""]
