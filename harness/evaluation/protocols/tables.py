"""Result and paper rows as one markdown table, for the protocols that lay out their
own columns (FashionIQ, CIRCO)."""

from __future__ import annotations

from tabulate import tabulate


def method_rows(result: dict, columns: list[str], chance: dict[str, float]) -> list[list]:
    rows = [[method, *(m.get(c) for c in columns)] for method, m in result["metrics"].items()]
    if chance:
        rows.append(["chance", *(chance.get(c) for c in columns)])
    return rows


def paper_rows(paper: list[dict], columns: list[str]) -> list[list]:
    return [[f"paper: {p['row']}", *(p["metrics"].get(c) for c in columns)] for p in paper]


def table(rows: list[list], columns: list[str]) -> str:
    return tabulate(rows, headers=["method", *columns], tablefmt="github", floatfmt=".2f", missingval="")


def paper_note(result: dict, paper: list[dict]) -> str:
    sources = "; ".join(dict.fromkeys(p["source"] for p in paper))
    generated = "manifest" in result.get("data", {})
    caveat = " The run above used generated data: its numbers are not comparable with them." if generated else ""
    return f"Paper rows (harness/evaluation/paper.py): {sources}.{caveat}"


def interval_table(result: dict, columns: list[str]) -> str:
    """The run's 95% bootstrap intervals per method and the paired intervals of the
    composed query minus each baseline (harness/evaluation/intervals.py); "" for
    results without them."""
    intervals = result.get("intervals")
    if not intervals:
        return ""

    def cell(low_high) -> str:
        return f"[{low_high[0]:.1f}, {low_high[1]:.1f}]"

    rows = [[method, *(cell(v[c]) if c in v else "" for c in columns)]
            for method, v in intervals["bootstrap"].items()]
    rows += [[pair, *(f"{v[c]['difference']:+.1f} {cell(v[c]['interval'])}" if c in v else "" for c in columns)]
             for pair, v in intervals["paired"].items()]
    note = (f"95% intervals over queries ({intervals['method']}); a paired row is the difference on the "
            "same queries and its interval: one method is ahead beyond query noise when it excludes 0.")
    return tabulate(rows, headers=["interval", *columns], tablefmt="github") + "\n\n" + note
