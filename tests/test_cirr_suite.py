"""The cirr suite on the real annotations (vendored in tests/data/cirr) with stand-in images."""

from __future__ import annotations

import hashlib
import json

import pytest

from harness.config import RunConfig
from harness.core.errors import HarnessError
from harness.pipeline import run
from harness.suites import SUITES
from harness.suites.cirr_layout import check_images
from tests.conftest import CIRR_ANNOTATIONS, REPO


def test_vendored_annotations_are_the_release_files():
    """tests/data/cirr holds the files its SHA256SUMS names, unchanged; where
    ../shared is beside the clone, its copies are the same bytes."""
    listed = [line.split(None, 1) for line in (CIRR_ANNOTATIONS / "SHA256SUMS").read_text().splitlines()]
    assert {name for _, name in listed} == {
        "captions/cap.rc2.val.json", "captions/cap.rc2.test1.json", "image_splits/split.rc2.val.json",
        "image_splits/split.rc2.test1.json", "server_examples/test1_pred_ranks_recall_subset.json"}
    shared = REPO.parent / "shared" / "data" / "cirr"
    for digest, name in listed:
        data = (CIRR_ANNOTATIONS / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, name
        if (shared / name).is_file():
            assert (shared / name).read_bytes() == data, name
    assert "MIT License" in (CIRR_ANNOTATIONS / "LICENSE").read_text()


def test_real_annotations_load_with_the_official_counts(cirr_root):
    suite = SUITES.get("cirr")(cirr_root)
    val = suite.load("val")
    test1 = suite.load("test1")
    assert (len(val.queries), len(val.gallery)) == (4181, 2297)
    assert (len(test1.queries), len(test1.gallery)) == (4148, 2315)
    assert val.has_targets and not test1.has_targets
    assert all(q.target is None for q in test1.queries)
    assert all(len(q.members) == 6 for q in val.queries)
    assert val.gallery[0] == "dev-244-0-img0"  # split-file order, not a folder glob


def test_missing_images_give_one_clear_error(cirr_root, tmp_path):
    suite = SUITES.get("cirr")(cirr_root)
    val = suite.load("val")
    moved = []
    for image_id in val.gallery[:7]:
        path = val.image_path(image_id)
        target = tmp_path / path.name
        path.rename(target)
        moved.append((target, path))
    try:
        with pytest.raises(HarnessError) as err:
            check_images(val, val.gallery)
        message = str(err.value)
        assert "7 of 2297 images" in message
        assert "(missing)" in message and "... and 2 more" in message
        assert "Expected layout" in message and "image_splits/split.rc2" in message
    finally:
        for target, path in moved:
            target.rename(path)


def test_bad_annotations_name_the_file_and_pair(tmp_path):
    (tmp_path / "captions").mkdir()
    (tmp_path / "image_splits").mkdir()
    (tmp_path / "image_splits" / "split.rc2.val.json").write_text(json.dumps({"a": "./dev/a.png"}))
    (tmp_path / "captions" / "cap.rc2.val.json").write_text(json.dumps([
        {"pairid": 7, "reference": "a", "caption": "x", "img_set": {"members": []}, "target_hard": "zz",
         "target_soft": {}}
    ]))
    with pytest.raises(HarnessError, match=r"pair id 7: target_hard 'zz' is not in the split file"):
        SUITES.get("cirr")(tmp_path).load("val")
    (tmp_path / "captions" / "cap.rc2.val.json").write_text("[{")
    with pytest.raises(HarnessError, match="not valid JSON"):
        SUITES.get("cirr")(tmp_path).load("val")


@pytest.mark.slow
def test_blip_tiny_evaluates_cirr_val_and_writes_test1_server_files(cirr_root, tmp_path):
    common = dict(backbone="blip-tiny", suite="cirr", data_root=str(cirr_root), out=str(tmp_path), train=False)
    val = run(RunConfig.resolve({"split": "val", **common}), argv=["--suite", "cirr"])
    assert val["protocol"]["queries"] == 4181 and val["protocol"]["gallery_images"] == 2297
    assert set(val["metrics"]) == {"composed f(q,t)", "image-only q", "text-only t"}

    test1 = run(RunConfig.resolve({"split": "test1", **common}), argv=["--suite", "cirr", "--split", "test1"])
    assert test1["metrics"] is None
    # the official example submission: every test1 pair id (both metrics' files hold the same ids)
    example = json.loads((CIRR_ANNOTATIONS / "server_examples" / "test1_pred_ranks_recall_subset.json").read_text())
    for metric, top in (("recall", 50), ("recall_subset", 3)):
        ours = json.loads(open(test1["server_files"][metric]).read())
        assert ours["version"] == "rc2" and ours["metric"] == metric
        assert set(ours) == set(example)  # every test pair id, and the two header keys
        queries = {str(q["pairid"]): q for q in json.loads(
            (cirr_root / "captions" / "cap.rc2.test1.json").read_text())}
        for pair_id, ids in ours.items():
            if pair_id in ("version", "metric"):
                continue
            q = queries[pair_id]
            assert len(ids) == top and len(set(ids)) == top and q["reference"] not in ids
            if metric == "recall_subset":
                assert set(ids) <= set(q["img_set"]["members"])
