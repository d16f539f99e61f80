"""A comparison of two recipes over seeds (harness/compare.py) as markdown."""

from __future__ import annotations

from pathlib import Path

from harness.reports.header import section_header


def comparison_markdown(result: dict, metrics: tuple[str, ...] = ("R@1", "R@5", "R@10", "Avg")) -> str:
    method = result["method"]
    rows = []
    for metric in metrics:
        d = result["difference"][metric]
        a, b = result["a"], result["b"]
        per_seed = ", ".join(f"{s['paired'][metric]['difference']:+.2f} [{s['paired'][metric]['interval'][0]:+.2f}, "
                             f"{s['paired'][metric]['interval'][1]:+.2f}]" for s in result["per_seed"])
        rows.append(f"| {metric} | {a['summary'][method][metric]:.2f} ± {a['sd'][method][metric]:.2f} | "
                    f"{b['summary'][method][metric]:.2f} ± {b['sd'][method][metric]:.2f} | "
                    f"{d['mean']:+.2f} ± {d['sd']:.2f} | {per_seed} | {d['seeds_beyond_query_noise']} of "
                    f"{len(result['seeds'])} | {'yes' if d['holds'] else 'no'} |")
    return "\n".join([
        f"A: `{result['a']['command']}`", "", f"B: `{result['b']['command']}`", "",
        f"{method}, seeds {', '.join(map(str, result['seeds']))}; A and B mean ± sd over seeds; A − B per seed "
        f"with its paired 95% interval over the same queries ({result['intervals']}); the effect holds when "
        "every seed's interval excludes 0 on the same side and the mean exceeds twice the sd over seeds.", "",
        "| metric | A | B | A − B over seeds | A − B per seed [paired 95% interval] | seeds beyond query noise "
        "| holds |",
        "|---|---|---|---|---|---|---|",
        *rows, "",
    ])


def comparison_section(path: Path, result: dict) -> list[str]:
    """BENCHMARKS.md's section of a comparison file."""
    return [*section_header(f"Recipes compared over seeds: {result['a']['file']} vs {result['b']['file']}", result,
                            path, remark="the machine of A's runs"), comparison_markdown(result)]
