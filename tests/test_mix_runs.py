"""--mix on every suite and backbone, end to end (generated data, random tiny models):
FashionIQ and CIRCO runs write their own metrics' table and heat-map, tuned per
metric on one half and reported on the other; "f alone" is the protocol's composed
figure on the evaluation half (from the run's saved embeddings); a tiny BLIP-2 mixes
under mean token pooling and is refused under max."""

from __future__ import annotations

from pathlib import Path

import pytest

from backbones.blip2 import build_tiny_blip2
from backbones.blip_tiny import build_random
from harness.config import RunConfig
from harness.core.errors import HarnessError
from harness.evaluation.embed import COMPOSED, SplitEmbeddings
from harness.evaluation.protocols import PROTOCOLS, ScoringRules
from harness.evaluation.protocols.fashioniq import columns_for
from harness.evaluation.query_subset import query_subset
from harness.evaluation.token_pooling import pooled
from harness.mixing.parts import heldout_halves
from harness.pipeline import run
from harness.reports.mixing import mixing_markdown
from harness.score import read_embeddings
from harness.suites import SUITES
from harness.suites.captions import cleaned
from harness.suites.circo_generator import CircoSpec
from harness.suites.circo_generator import generate as generate_circo
from harness.suites.fashioniq_generator import FashionIQSpec
from harness.suites.fashioniq_generator import generate as generate_fashioniq

FASHIONIQ = columns_for(["dress", "shirt", "toptee"])
CIRCO = [f"mAP@{k}" for k in (5, 10, 25, 50)] + [f"R@{k}" for k in (5, 10, 25, 50)]


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("mix_runs")
    generate_fashioniq(base / "fashioniq", FashionIQSpec(image_size=32, queries={"train": 1, "val": 10, "test": 1}))
    generate_circo(base / "circo", CircoSpec(image_size=32, queries={"val": 16, "test": 1}, distractors=30,
                                             train_sets=0))
    build_random(seed=5).save(base / "blip-tiny")
    build_tiny_blip2(seed=0, num_query_tokens=4).save(base / "blip2")
    return {"fashioniq": base / "fashioniq", "circo": base / "circo", "blip-tiny": base / "blip-tiny",
            "blip2": base / "blip2"}


def mixed_run(roots, out: Path, suite: str, backbone: str = "blip-tiny", **extra) -> dict:
    return run(RunConfig.resolve({"suite": suite, "data_root": str(roots[suite]), "backbone": backbone,
                                  "checkpoint": str(roots[backbone]), "train": False, "cache": False,
                                  "out": str(out), "mix_step": 0.25, "threads": 2, "save_embeddings": True,
                                  **extra}), argv=["(mixing test)"])


def composed_on_the_evaluation_half(roots, out: Path, suite: str, rule: str) -> dict[str, float]:
    """The protocol's own composed metrics on the evaluation half, from the embeddings
    the run saved (pooled as the run pooled them)."""
    suite_cls = SUITES.get(suite)
    data = cleaned(suite_cls(roots[suite]).load("val"), "covr")
    saved = read_embeddings(next(out.glob("*.embeddings.safetensors")))
    emb = pooled(SplitEmbeddings(saved["gallery_ids"], saved["gallery"], saved["composed"], saved["image"],
                                 saved["text"]), rule)
    _, eval_rows = heldout_halves(data, seed=0)
    return PROTOCOLS.get(suite_cls.scoring).evaluate(*query_subset(data, emb, eval_rows), ScoringRules())[COMPOSED]


def check_block(block: dict, metrics: list[str], out: Path) -> None:
    """Each metric tuned on one half and reported on the other, its sweep entries
    equal to its row, the heat-map written."""
    assert block["metrics"] == metrics
    assert [r["chosen_for"] for r in block["rows"] if r.get("chosen_for")] == metrics
    assert set(block["sweep"]["evaluation"]) == set(metrics) and block["sweep"]["triples"] == 15
    for row in block["rows"]:
        assert set(row["metrics"]) == set(metrics) == set(row["tuning"])
        if row.get("chosen_for"):
            i = row["sweep_index"]
            assert {m: block["sweep"]["evaluation"][m][i] for m in metrics} == row["metrics"]
            assert block["sweep"]["tuning"][row["chosen_for"]][i] == row["tuning"][row["chosen_for"]]
    assert (out / block["heatmap"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("suite, metrics, panels", [
    ("fashioniq", FASHIONIQ, "avg R@10, avg R@50 and Avg"),
    ("circo", CIRCO, "mAP@5, mAP@10 and mAP@50"),
])
def test_sweep_and_learn_on_the_suites_own_metrics(roots, tmp_path, suite, metrics, panels):
    result = mixed_run(roots, tmp_path, suite, mix=["sweep", "learn", "median", "0.2,0.2,0.6"])
    block = result["mixing"]
    check_block(block, metrics, tmp_path)
    assert block["scoring"] == suite and "token_pooling" not in block
    assert abs(sum(block["learned"]["weights"]) - 1) < 1e-6 and block["learned"]["pairs"] == block["tuning"]["queries"]
    f_alone = next(r for r in block["rows"] if r["method"] == "f alone")
    assert f_alone["metrics"] == composed_on_the_evaluation_half(roots, tmp_path, suite, "mean")
    table = next(tmp_path.glob(f"{suite}_val_*.md")).read_text()
    assert f"| {metrics[1]} " in table and f"Heat-map of {panels} over the simplex" in table
    assert f"- scored by the {suite} protocol" in table


def test_blip2_mixes_token_means_and_refuses_max_sim(roots, tmp_path):
    """Generated FashionIQ: the token means the protocol scored (not re-normalised),
    "f alone" exactly the protocol's composed figures on the evaluation half."""
    block = mixed_run(roots, tmp_path / "mean", "fashioniq", backbone="blip2", mix=["sweep"])["mixing"]
    check_block(block, FASHIONIQ, tmp_path / "mean")
    assert block["token_pooling"] == "mean"
    f_alone = next(r for r in block["rows"] if r["method"] == "f alone")
    assert f_alone["metrics"] == composed_on_the_evaluation_half(roots, tmp_path / "mean", "fashioniq", "mean")
    assert "token pooling mean" in "\n".join(mixing_markdown(block))
    with pytest.raises(HarnessError, match="multi-vector"):
        mixed_run(roots, tmp_path / "max", "fashioniq", backbone="blip2", mix=["sweep"], token_pooling="max")
    assert not (tmp_path / "max").exists() or not any((tmp_path / "max").glob("*.json"))


def test_reports_show_the_blocks_own_heatmap_metrics():
    """A block names its heat-map metrics; one written before it did shows CIRR's."""
    rows = [{"method": "f alone", "weights": [0, 0, 1], "metrics": {"R@1": 1.0, "R@5": 2.0, "Avg": 3.0}}]
    old = {"tuning": {"split": "val", "rule": "r", "queries": 1, "gallery_images": 2, "pair_ids_sha256": "ab" * 32},
           "metrics": ["R@1", "R@5", "Avg"], "rows": rows, "heatmap": "x.png"}
    old["evaluation"] = old["tuning"]
    assert any("Heat-map of R@1, R@5 and Avg" in line for line in mixing_markdown(old))
    assert any("Heat-map of mAP@10 and R@10" in line
               for line in mixing_markdown({**old, "heatmap_metrics": ["mAP@10", "R@10"]}))
