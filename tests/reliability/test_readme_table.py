"""README.md's fault table is the one generated from the @fault marks of these tests."""

from __future__ import annotations

from tests.reliability.faults import AREAS, README, collect, current_readme_block, readme_block


def test_every_area_of_the_issue_has_a_row():
    assert {f.area for f in collect()} >= set(AREAS)


def test_readme_table_is_current():
    block = current_readme_block(README.read_text())
    assert block is not None, "README.md lost its fault-table markers"
    assert block == readme_block(collect()), (
        "README.md's fault table is stale: run `python -m tests.reliability.faults --write`"
    )
