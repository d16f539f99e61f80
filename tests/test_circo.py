"""CIRCO: the generated layout, the reader, the test-server file (coverage, length,
no duplicates), and whole runs with blip-tiny (zero-shot after shapes training;
test server file from its checkpoint)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.config import RunConfig
from harness.core.errors import HarnessError
from harness.evaluation.server_files import circo_problems, write_circo_submission
from harness.pipeline import run
from harness.suites.circo import CircoSuite, read_circo
from harness.suites.circo_generator import INFO_FILE, CircoSpec, file_name, generate

SPEC = CircoSpec(queries={"val": 10, "test": 6}, distractors=40, train_sets=40)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("circo") / "data"
    generate(path, SPEC)
    return path


def test_generated_layout_is_circo(root):
    images = json.loads((root / INFO_FILE).read_text())["images"]
    ids = [image["id"] for image in images]
    assert len(set(ids)) == len(ids) and len(ids) > 50  # the server file needs 50 per query
    assert all(image["file_name"] == f"{image['id']:012d}.jpg" == file_name(image["id"]) for image in images)
    assert all((root / "COCO2017_unlabeled" / "unlabeled2017" / image["file_name"]).is_file() for image in images)
    val = json.loads((root / "annotations" / "val.json").read_text())
    test = json.loads((root / "annotations" / "test.json").read_text())
    assert [q["id"] for q in val] == list(range(10)) and len(test) == 6
    assert any(len(q["gt_img_ids"]) > 1 for q in val)  # several ground truths
    for q in val:
        assert q["gt_img_ids"][0] == q["target_img_id"]
        assert q["reference_img_id"] not in q["gt_img_ids"]
        assert set(q["gt_img_ids"]) <= set(ids)
        assert {"relative_caption", "shared_concept"} <= set(q)
    assert all("target_img_id" not in q and "gt_img_ids" not in q for q in test)


def test_reader(root):
    data = read_circo(root, "val", "circo")
    q = data.queries[0]
    assert q.ground_truths[0] == q.target and len(data.gallery) == len(set(data.gallery))
    assert data.image_path(q.reference).name == f"{int(q.reference):012d}.jpg"
    assert not read_circo(root, "test", "circo").has_targets
    with pytest.raises(HarnessError, match="no train split"):
        CircoSuite(root).load("train")


def test_duplicate_image_id_is_an_error(tmp_path, root):
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    info = json.loads((copy / INFO_FILE).read_text())
    info["images"].append(info["images"][0])
    (copy / INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(HarnessError, match="appears twice"):
        read_circo(copy, "val", "circo")


def test_real_layout_without_a_training_set_asks_for_a_checkpoint(tmp_path, root):
    copy = tmp_path / "real"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("zero_shot_train", "manifest.json"))
    with pytest.raises(HarnessError, match="--checkpoint DIR --no-train"):
        CircoSuite(copy).load_training("train")


def test_server_file_checks_coverage_length_and_duplicates(tmp_path):
    good = {"0": list(range(50)), "1": list(range(50, 100))}
    assert circo_problems(good, [0, 1]) == []
    assert any("missing" in p for p in circo_problems({"0": list(range(50))}, [0, 1]))
    assert any("unknown" in p for p in circo_problems({**good, "7": list(range(50))}, [0, 1]))
    assert any("twice" in p for p in circo_problems({**good, "1": [3] + list(range(49))}, [0, 1]))
    assert any("not 50" in p for p in circo_problems({**good, "1": list(range(49))}, [0, 1]))
    with pytest.raises(ValueError, match="twice"):
        write_circo_submission(tmp_path / "s.json", [0], [["5"] * 50])
    written = json.loads(Path(write_circo_submission(tmp_path / "s.json", [0], [[str(i) for i in range(50)]])).read_text())
    assert written == {"0": list(range(50))}  # COCO ids are integers


@pytest.mark.slow  # about 30 s on 2 busy cores
def test_zero_shot_run_and_server_file(root, tmp_path):
    """blip-tiny trained 1 epoch on the shapes set beside the generated CIRCO, scored on
    val (mAP and recall); its checkpoint then writes the test server file."""
    config = dict(suite="circo", data_root=str(root), out=str(tmp_path), epochs=1, threads=2)
    result = run(RunConfig.resolve(config), argv=["(test)"])
    assert result["training"]["trained_on"] == "shapes/train"
    metrics = result["metrics"]["composed f(q,t)"]
    assert set(metrics) == {f"mAP@{k}" for k in (5, 10, 25, 50)} | {f"R@{k}" for k in (5, 10, 25, 50)}
    assert all(0.0 <= v <= 100.0 for v in metrics.values())
    assert result["protocol"]["scoring"] == "circo"
    markdown = next(tmp_path.glob("circo_val_*.md")).read_text()
    assert "paper: CoVR-BLIP, zero-shot" in markdown and "21.43" in markdown

    checkpoint = result["backbone"]["checkpoint"]
    test = run(RunConfig.resolve({**config, "split": "test", "checkpoint": checkpoint, "train": False}),
               argv=["(test)"])
    submission = json.loads(Path(test["server_files"]["circo"]).read_text())
    annotations = json.loads((root / "annotations" / "test.json").read_text())
    assert circo_problems(submission, [q["id"] for q in annotations]) == []
    references = {str(q["id"]): q["reference_img_id"] for q in annotations}
    assert all(references[qid] not in ids for qid, ids in submission.items())


def test_shared_concept_template_builds_magiclens_query_text(root, tmp_path):
    """--query-template shared-concept: "find {shared_concept} but {relative_caption}"
    (MagicLens data_utils.py line 173), named in the protocol and the fingerprint."""
    raw = json.loads((root / "annotations" / "val.json").read_text())
    plain = CircoSuite(root).load("val")
    templated = CircoSuite(root, query_template="shared-concept").load("val")
    assert [q.caption for q in plain.queries] == [q["relative_caption"] for q in raw]
    assert [q.caption for q in templated.queries] == [
        f"find {q['shared_concept']} but {q['relative_caption']}" for q in raw]
    assert templated.provenance["query_template"] == "shared-concept" and "query_template" not in plain.provenance
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    del raw[3]["shared_concept"]
    (broken / "annotations" / "val.json").write_text(json.dumps(raw))
    with pytest.raises(HarnessError, match="entry 3: --query-template shared-concept needs a shared_concept"):
        CircoSuite(broken, query_template="shared-concept").load("val")
    assert CircoSuite(broken).load("val").queries[3].caption == raw[3]["relative_caption"]


def test_query_template_reaches_the_fingerprint_and_is_refused_elsewhere(root, tmp_path):
    from harness.pipeline import preflight
    from tests.conftest import random_model_run

    ckpt_root = tmp_path / "ckpt_root"
    random_model_run(ckpt_root)  # writes a random blip-tiny checkpoint under ckpt_root/ckpt
    result = run(RunConfig.resolve({"suite": "circo", "data_root": str(root), "checkpoint": str(ckpt_root / "ckpt"),
                                    "train": False, "cache": False, "out": str(tmp_path / "out"),
                                    "query_template": "shared-concept"}), argv=["(test run)"])
    assert result["protocol"]["query_template"] == "shared-concept"
    assert result["protocol"]["fingerprint"]["query_template"] == "shared-concept"
    assert "query text shared-concept" in (tmp_path / "out" / next(
        p.name for p in (tmp_path / "out").glob("circo_*.md"))).read_text()
    with pytest.raises(HarnessError, match="--query-template applies to circo"):
        preflight(RunConfig.resolve({"suite": "shapes", "query_template": "shared-concept"}))
