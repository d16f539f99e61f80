"""FashionIQ: the generated layout, the reader's caption rules, per-category scoring
and averaging on hand-made cases, and a whole run with blip-tiny."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from harness.config import RunConfig
from harness.core.errors import HarnessError
from harness.evaluation.embed import SplitEmbeddings
from harness.evaluation.protocols.fashioniq import fashioniq_metrics, merge_phrasings
from harness.pipeline import run
from harness.run import build_parser
from harness.suites import SUITES, Query
from harness.suites.fashioniq import CATEGORIES, read_fashioniq
from harness.suites.fashioniq_generator import FashionIQSpec, generate

SPEC = FashionIQSpec(queries={"train": 40, "val": 8, "test": 3})


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fiq") / "data"
    generate(path, SPEC)
    return path


def test_generated_layout_is_fashioniq(root):
    for category in CATEGORIES:
        for split in ("train", "val", "test"):
            entries = json.loads((root / "captions" / f"cap.{category}.{split}.json").read_text())
            images = json.loads((root / "image_splits" / f"split.{category}.{split}.json").read_text())
            assert len(entries) == SPEC.queries[split]
            assert len(set(images)) == len(images)
            for entry in entries:
                assert len(entry["captions"]) == 2 and all(isinstance(c, str) for c in entry["captions"])
                assert entry["candidate"] in images
                assert ("target" in entry) == (split != "test")
                if split != "test":
                    assert entry["target"] in images and entry["target"] != entry["candidate"]
            assert all((root / "images" / f"{i}.png").is_file() for i in images)


def test_generator_is_deterministic(tmp_path, root):
    generate(tmp_path / "again", SPEC)
    for path in sorted((root / "captions").iterdir()) + sorted((root / "image_splits").iterdir()):
        assert (tmp_path / "again" / path.relative_to(root)).read_bytes() == path.read_bytes()


def test_caption_rules(root):
    entry = json.loads((root / "captions" / "cap.dress.val.json").read_text())[0]
    c1, c2 = entry["captions"]
    one = read_fashioniq(root, "val", "fashioniq", "and")
    both = read_fashioniq(root, "val", "fashioniq-both-orders", "both")
    assert one.queries[0].caption == f"{c1} and {c2}"
    assert [q.caption for q in both.queries[:2]] == [f"{c1} and {c2}", f"{c2} and {c1}"]
    assert both.queries[0].pair_id == both.queries[1].pair_id
    assert len(both.queries) == 2 * len(one.queries) == 2 * 3 * SPEC.queries["val"]
    assert list(one.groups) == list(CATEGORIES)
    assert set(one.gallery) == {i for ids in one.groups.values() for i in ids}
    assert {q.group for q in one.queries} == set(CATEGORIES)
    assert not read_fashioniq(root, "test", "fashioniq", "and").has_targets


def test_target_outside_its_category_gallery_is_an_error(tmp_path, root):
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    split_file = copy / "image_splits" / "split.shirt.val.json"
    target = json.loads((copy / "captions" / "cap.shirt.val.json").read_text())[0]["target"]
    split_file.write_text(json.dumps([i for i in json.loads(split_file.read_text()) if i != target]))
    with pytest.raises(HarnessError, match="not in"):
        read_fashioniq(copy, "val", "fashioniq", "and")


def scored(score_rows: dict[str, list[list[float]]], targets: dict[str, list[int]], references=None):
    """fashioniq_metrics over hand-made scores: category c has gallery items c0, c1, ...
    and its query i scores them as score_rows[c][i]."""
    queries, rows, groups = [], [], {}
    columns = sum(len(r[0]) for r in score_rows.values())
    offset = 0
    for category, table in score_rows.items():
        ids = [f"{category}{g}" for g in range(len(table[0]))]
        groups[category] = ids
        for i, row in enumerate(table):
            reference = (references or {}).get(category, [None] * len(table))[i]
            queries.append(Query(len(queries), ids[reference] if reference is not None else "elsewhere",
                                 "caption", ids[targets[category][i]], group=category))
            full = torch.zeros(columns)
            full[offset : offset + len(row)] = torch.tensor(row)
            rows.append(full)
        offset += len(table[0])
    gallery_ids = [i for ids in groups.values() for i in ids]
    return fashioniq_metrics(queries, torch.stack(rows), torch.eye(columns), gallery_ids, groups, ks=(1, 2))


def test_recall_per_category_and_unweighted_average():
    # dress: 1 query, target first (R@1 100); shirt: 3 queries, one target first and two
    # second (R@1 33.3, R@2 100). The average weighs categories, not queries.
    m = scored(
        {"dress": [[0.9, 0.1, 0.2]], "shirt": [[0.9, 0.5], [0.9, 0.5], [0.9, 0.5]]},
        {"dress": [0], "shirt": [0, 1, 1]},
    )
    assert m["dress R@1"] == 100.0
    assert m["shirt R@1"] == pytest.approx(100 / 3) and m["shirt R@2"] == 100.0
    assert m["avg R@1"] == pytest.approx((100 + 100 / 3) / 2)
    assert m["avg R@2"] == 100.0
    assert m["Avg"] == pytest.approx((m["avg R@1"] + m["avg R@2"]) / 2)


def test_other_categories_never_compete_and_reference_is_removed():
    # the dress query scores a shirt image highest: it is not in the dress gallery.
    # the shirt query's reference (shirt0) scores highest: it is removed.
    queries = [Query(0, "x", "c", "dress1", group="dress"), Query(1, "shirt0", "c", "shirt1", group="shirt")]
    groups = {"dress": ["dress0", "dress1"], "shirt": ["shirt0", "shirt1", "shirt2"]}
    gallery_ids = ["dress0", "dress1", "shirt0", "shirt1", "shirt2"]
    scores = torch.tensor([[0.1, 0.5, 0.9, 0.0, 0.0], [0.0, 0.0, 0.9, 0.5, 0.1]])
    m = fashioniq_metrics(queries, scores, torch.eye(5), gallery_ids, groups, ks=(1,))
    assert m["dress R@1"] == 100.0 and m["shirt R@1"] == 100.0


def test_both_orders_average_the_embeddings():
    queries = [Query(0, "r", "a and b", "t"), Query(0, "r", "b and a", "t"), Query(1, "r", "c and d", "t")]

    emb = SplitEmbeddings(["t"], torch.ones(1, 2), torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]),
                          torch.ones(3, 2), torch.ones(3, 2))
    merged_queries, merged = merge_phrasings(queries, emb)
    assert [q.pair_id for q in merged_queries] == [0, 1]
    assert torch.allclose(merged.composed, torch.tensor([[2**-0.5, 2**-0.5], [1.0, 0.0]]))


def test_help_lists_the_suites():
    text = build_parser().format_help()
    assert "fashioniq" in text and "fashioniq-both-orders" in text and "circo" in text
    assert "fashioniq" in SUITES.names()


def test_fine_tune_and_evaluate_end_to_end(root, tmp_path):
    """blip-tiny trained 1 epoch on the generated train split, scored on val; the
    tables carry the paper rows; the test split writes the rankings file."""
    config = dict(suite="fashioniq", data_root=str(root), out=str(tmp_path), epochs=1, threads=2)
    result = run(RunConfig.resolve(config), argv=["(test)"])
    metrics = result["metrics"]["composed f(q,t)"]
    expected = {f"{c} R@{k}" for c in CATEGORIES for k in (10, 50)} | {"avg R@10", "avg R@50", "Avg"}
    assert set(metrics) == expected
    assert all(0.0 <= v <= 100.0 for v in metrics.values())
    protocol = result["protocol"]
    assert protocol["scoring"] == "fashioniq" and protocol["queries"] == 3 * SPEC.queries["val"]
    assert protocol["caption_rule"].startswith("c1 and c2")
    markdown = next(tmp_path.glob("fashioniq_val_*.md")).read_text()
    assert "paper: CoVR-BLIP, fine-tuned on FashionIQ" in markdown and "48.53" in markdown

    checkpoint = result["backbone"]["checkpoint"]
    test = run(RunConfig.resolve({**config, "split": "test", "checkpoint": checkpoint, "train": False}),
               argv=["(test)"])
    rankings = json.loads(Path(test["server_files"]["rankings"]).read_text())["rankings"]
    assert len(rankings) == 3 * SPEC.queries["test"]
    assert all(len(r["ranking"]) == len(set(r["ranking"])) and r["candidate"] not in r["ranking"] for r in rankings)
