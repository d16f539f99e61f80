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
