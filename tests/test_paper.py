"""The papers' numbers kept as data (harness/evaluation/paper.py and paper_zero_shot.py):
every zero-shot row names its source and weights, states its protocol's suite, split,
composer and prompt, and reports only metrics its suite's protocol computes, as
percentages; each sits in the paper list of its suite's protocol."""

from __future__ import annotations

import pytest

from harness.evaluation.average_precision import MAP_KS, RECALL_KS
from harness.evaluation.metrics import CIRR_METRICS
from harness.evaluation.paper import PAPER_CIRCO, PAPER_CIRR, PAPER_FASHIONIQ, PAPER_ZERO_SHOT
from harness.evaluation.paper_zero_shot import CLIP4CIR_CODE_PROTOCOLS, LINCIR_CODE_PROTOCOLS
from harness.evaluation.protocols.fashioniq import columns_for
from harness.suites import SUITES
from harness.suites.fashioniq import CATEGORIES

COMPOSERS = ("image", "text", "sum", "combiner", "pic2word", "searle", "lincir")
WITHOUT_PROMPT = ("image", "text", "sum", "combiner")  # the only composers that may leave "prompt" None
METRICS = {"cirr": set(CIRR_METRICS), "fashioniq": set(columns_for(CATEGORIES)),
           "circo": {f"mAP@{k}" for k in MAP_KS} | {f"R@{k}" for k in RECALL_KS}}
PAPERS = {"cirr": PAPER_CIRR, "fashioniq": PAPER_FASHIONIQ, "circo": PAPER_CIRCO}


def protocol_problems(protocol: dict) -> list[str]:
    problems = [f"no {key!r}" for key in ("suite", "split", "composer", "prompt") if key not in protocol]
    if protocol.get("suite") not in SUITES.names():
        problems.append(f"unknown suite {protocol.get('suite')!r}")
    composer = protocol.get("composer")
    if composer not in COMPOSERS:
        problems.append(f"unknown composer {composer!r}")
    prompt = protocol.get("prompt")
    if not (isinstance(prompt, str) and prompt or prompt is None and composer in WITHOUT_PROMPT):
        problems.append(f"prompt {prompt!r} for composer {composer!r}")
    if not isinstance(protocol.get("reference_removed", False), bool):
        problems.append("reference_removed is not True/False")
    return problems


def row_problems(row: dict) -> list[str]:
    """What is wrong with a paper row, [] when nothing."""
    problems = [f"no {key}" for key in ("row", "source", "weights") if not isinstance(row.get(key), str) or
                not row[key]]
    protocol = row.get("protocol", {})
    problems += protocol_problems(protocol)
    if problems:
        return problems
    scoring = SUITES.get(protocol["suite"]).scoring
    if not row.get("metrics"):
        problems.append("no metrics")
    for name, value in row.get("metrics", {}).items():
        if name not in METRICS[scoring]:
            problems.append(f"{name!r} is not a metric of the {scoring} protocol")
        if not (isinstance(value, float) and 0 < value < 100):
            problems.append(f"{name} = {value!r} is not a percentage in (0, 100)")
    if not any(p is row for p in PAPERS[scoring]):
        problems.append(f"not in the {scoring} paper list")
    return problems


@pytest.mark.parametrize("row", PAPER_ZERO_SHOT, ids=lambda r: f"{r['protocol']['suite']}: {r['row']}")
def test_every_zero_shot_row_is_traced_and_well_formed(row):
    assert row_problems(row) == []
    assert row["zero_shot"] is True


def test_the_zero_shot_rows_cover_each_suite():
    suites = {SUITES.get(r["protocol"]["suite"]).scoring for r in PAPER_ZERO_SHOT}
    assert suites == {"cirr", "fashioniq", "circo"}
    assert len({(r["row"], r["protocol"]["suite"]) for r in PAPER_ZERO_SHOT}) == len(PAPER_ZERO_SHOT)


@pytest.mark.parametrize("protocol", [*LINCIR_CODE_PROTOCOLS.values(), *CLIP4CIR_CODE_PROTOCOLS.values()])
def test_the_protocols_kept_for_untraced_rows_are_complete(protocol):
    assert protocol_problems(protocol) == []


def test_the_checks_see_a_broken_row():
    """The checks themselves: a wrong metric key, values out of range or not floats, a missing
    prompt for a pseudo-word composer and a row outside its suite's list are all found."""
    good = PAPER_ZERO_SHOT[0]
    assert row_problems(good) == []
    wrong_key = {**good, "metrics": {"Recall@1": 24.0}}
    assert any("not a metric" in p for p in row_problems(wrong_key))
    out_of_range = {**good, "metrics": {"R@1": 0.0, "R@5": 100.0, "R@10": 52}}
    assert sum("not a percentage" in p for p in row_problems(out_of_range)) == 3
    no_prompt = {**good, "protocol": {**good["protocol"], "prompt": None}}
    assert any("prompt None" in p for p in row_problems(no_prompt))
    assert protocol_problems({**good["protocol"], "composer": "sum", "prompt": None}) == []
    no_source = {**good, "source": ""}
    assert row_problems(no_source) == ["no source"]
    assert any("paper list" in p for p in row_problems(dict(good)))  # a copy is not the listed row
