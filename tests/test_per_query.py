"""The per-query file (harness/evaluation/per_query.py): its ranks agree with its
values, its values average to the results' metrics, and two runs pair by pair id."""

from __future__ import annotations

import json

import pytest
import torch

from harness.core.errors import HarnessError
from harness.evaluation import per_query
from tests.conftest import random_model_run


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("per_query")
    result = random_model_run(root)
    return result, root / "out" / result["per_query_file"]


def test_ranks_agree_with_values_and_values_with_metrics(small_run):
    result, path = small_run
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == result["protocol"]["queries"] == 45
    for line in lines:
        for method in line["methods"].values():
            assert line["reference"] not in method["top"] and len(method["top"]) == 10
            assert method["top_scores"] == sorted(method["top_scores"], reverse=True)
            for k in (1, 5, 10, 50):  # covr convention: R@K counts the hard target
                assert method["values"][f"R@{k}"] == float(method["target_rank"] <= k)
            if method["subset_rank"] is not None and method["subset_rank"] == 1:
                assert method["values"]["Rsubset@1"] == 1.0
            if method["target_rank"] == 1:
                assert method["top"][0] == line["target"]
    _, values = per_query.read_values(path)
    for name, metrics in result["metrics"].items():
        for metric, value in metrics.items():
            assert 100.0 * values[name][metric].mean().item() == pytest.approx(value, abs=1e-9)


def test_two_runs_pair_by_pair_id_whatever_their_order(small_run, tmp_path):
    _, path = small_run
    lines = path.read_text().splitlines()
    shuffled = tmp_path / "b.queries.jsonl"
    shuffled.write_text("\n".join(reversed(lines)) + "\n")
    a, b = per_query.paired_values(path, shuffled, "composed f(q,t)")
    assert all(torch.equal(a[m], b[m]) for m in a)
    short = tmp_path / "c.queries.jsonl"
    short.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(HarnessError, match="same queries"):
        per_query.paired_values(path, short, "composed f(q,t)")


@pytest.mark.parametrize("suite", ["fashioniq", "circo"])
def test_other_protocols_records_agree_with_their_metrics(suite):
    from backbones.blip_tiny import build_random
    from harness.evaluation.embed import embed_split
    from harness.evaluation.protocols import PROTOCOLS, ScoringRules
    from harness.suites import SUITES

    suite_obj = SUITES.get(suite)(None)
    data = suite_obj.load("val")
    emb = embed_split(build_random(seed=1), data, torch.device("cpu"), "fp32", 64)
    protocol = PROTOCOLS.get(suite_obj.scoring)
    records = protocol.query_records(data, emb, ScoringRules())
    metrics = protocol.evaluate(data, emb, ScoringRules())
    sums: dict = {}
    for record in records:
        for method, m in record["methods"].items():
            assert record["reference"] not in m["top"]
            for name, value in m["values"].items():
                if "R@" in name and m["target_rank"] is not None and suite == "fashioniq":
                    assert value == float(m["target_rank"] <= int(name.split("@")[1]))
                sums.setdefault((method, name), []).append(value)
    for (method, name), values in sums.items():
        assert 100.0 * sum(values) / len(values) == pytest.approx(metrics[method][name], abs=1e-9)
