"""The figures in BENCHMARKS.md hold: it is exactly what `python -m harness.report
results/reference` writes, and every result there came from a clean commit and from
one of the commands that regenerate them (benches/regenerate_reference.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from benches.regenerate_reference import JOBS, REPORT, recorded_commands
from harness.reports.benchmarks import benchmarks_markdown, load_results
from tests.conftest import REPO

REFERENCE = REPO / "results" / "reference"


def test_benchmarks_md_is_what_the_report_writes(monkeypatch):
    monkeypatch.chdir(REPO)  # the report names files by the path it was given
    written = benchmarks_markdown(load_results([Path(REPORT[1])]))
    assert (REPO / "BENCHMARKS.md").read_text() == written, (
        "BENCHMARKS.md is stale or edited by hand: python -m harness.report results/reference --out BENCHMARKS.md")


def test_every_reference_result_is_from_a_clean_commit_and_a_listed_command():
    files = sorted(REFERENCE.glob("*.json"))
    assert files
    recorded = {}
    for path in files:
        result = json.loads(path.read_text())
        git = result["git"]
        assert git["dirty"] is False, f"{path.name} was made from a tree with uncommitted changes"
        assert re.fullmatch(r"[0-9a-f]{40}", git["commit"]), path.name
        assert result["hardware"].get("blas"), f"{path.name} does not name its BLAS"
        recorded[result["command"]] = path.name
    listed = [command for _, job in JOBS for command in recorded_commands(job)]
    assert sorted(recorded) == sorted(listed), "results/reference and benches/regenerate_reference.py disagree"
