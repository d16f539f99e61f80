"""An index page across runs (`python -m harness.report DIR --html OUT`): per suite,
one row per run result (its composed query's metrics, linked to the run's own page
when it has one) with the papers' rows beneath for comparison."""

from __future__ import annotations

import html
import os
from pathlib import Path

from harness.reports.html import HEALTH_SCRIPT, STYLE
from harness.reports.run import PAPERS


def _link(result_path: Path, out: Path) -> str:
    page = result_path.with_suffix(".html")
    if not page.is_file():
        return html.escape(result_path.name)
    href = os.path.relpath(page.resolve(), out.parent.resolve())
    return f'<a href="{html.escape(Path(href).as_posix())}">{html.escape(result_path.name)}</a>'


def index_html(results: list[tuple[Path, dict]], out: Path) -> str:
    by_suite: dict[str, list[tuple[Path, dict]]] = {}
    for path, result in results:
        if result.get("kind") or not result.get("metrics"):
            continue  # benches and test-split runs have no metrics row
        by_suite.setdefault(result["protocol"]["suite"], []).append((path, result))
    parts = ["<h1>Runs</h1>", f"<p>{sum(len(v) for v in by_suite.values())} runs with metrics; each name links "
                              "to its page. Paper rows come from harness/evaluation/paper.py.</p>"]
    for suite, runs in sorted(by_suite.items()):
        columns = list(next(iter(runs[0][1]["metrics"].values())))
        rows = []
        for path, result in runs:
            composed = next(iter(result["metrics"].values()))
            rows.append([_link(path, out), result["protocol"]["split"], result["backbone"]["name"], result["seed"],
                         *(f"{composed[c]:.2f}" if c in composed else "" for c in columns)])
        for paper in PAPERS.get(suite, []):
            rows.append([html.escape(f"paper: {paper['row']}"), paper["protocol"].get("split", ""), "", "",
                         *(f"{paper['metrics'][c]:.2f}" if c in paper["metrics"] else "" for c in columns)])
        parts += [f"<h2>{html.escape(suite)}</h2>", _raw_table(["run", "split", "backbone", "seed", *columns], rows)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>coir-bench runs</title>"
            f"<style>{STYLE}</style><script>{HEALTH_SCRIPT}</script></head><body>\n" + "\n".join(parts)
            + "\n</body></html>\n")


def _raw_table(headers: list[str], rows: list[list[str]]) -> str:
    """A table whose cells are already HTML (links), unlike `table`."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"

