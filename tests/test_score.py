"""python -m harness.score: embeddings made elsewhere, scored with the suite's
protocol (harness/score.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from harness.score import main, score_embeddings
from tests.conftest import random_model_run


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory):
    """A blip-tiny run (random weights) on a small shapes split, with its embeddings exported."""
    root = tmp_path_factory.mktemp("score")
    return root, {split: random_model_run(root, split=split, save_embeddings=True) for split in ("val", "test1")}


def _file(root, split: str):
    return next((root / "out").glob(f"shapes_{split}_*.embeddings.safetensors"))


def test_score_reproduces_the_runs_metrics_exactly(exported_run, tmp_path):
    root, results = exported_run
    argv = ["--suite", "shapes", "--data-root", str(root / "shapes"), "--embeddings", str(_file(root, "val")),
            "--out", str(tmp_path)]
    assert main(argv) == 0
    scored = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert scored["metrics"] == results["val"]["metrics"]
    assert scored["intervals"] == results["val"]["intervals"]
    assert (tmp_path / scored["per_query_file"]).is_file() and next(tmp_path.glob("*.html")).is_file()
    assert scored["protocol"]["fingerprint"]["text_length"].startswith("not recorded")


def test_score_writes_well_formed_server_files_for_test1(exported_run, tmp_path):
    root, results = exported_run
    assert main(["--suite", "shapes", "--data-root", str(root / "shapes"), "--split", "test1",
                 "--embeddings", str(_file(root, "test1")), "--out", str(tmp_path)]) == 0
    scored = json.loads(next(p for p in tmp_path.glob("*.json") if "submission" not in p.name).read_text())
    ours = json.loads(open(scored["server_files"]["recall"]).read())
    theirs = json.loads(open(results["test1"]["server_files"]["recall"]).read())
    assert ours == theirs and ours["version"] == "rc2" and ours["metric"] == "recall"


def _arrays(root):
    from safetensors import safe_open

    with safe_open(str(_file(root, "val")), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    return {**tensors, "gallery_ids": json.loads(meta["gallery_ids"]), "pair_ids": json.loads(meta["pair_ids"])}


def _broken(arrays: dict, fault: str) -> dict:
    out = dict(arrays)
    if fault == "wrong ids":
        out["gallery_ids"] = [*arrays["gallery_ids"][:-1], "not-an-image"]
    elif fault == "wrong row count":
        out["composed"] = arrays["composed"][:-1]
    elif fault == "nan":
        out["composed"] = arrays["composed"].clone()
        out["composed"][3, 0] = float("nan")
    elif fault == "dimension":
        out["composed"] = arrays["composed"][:, :-2]
    return out


@pytest.mark.parametrize("fault,message", [("wrong ids", "gallery_ids: .* not in the split"),
                                           ("wrong row count", "composed: 44 rows for 45 pair_ids"),
                                           ("nan", "NaN"), ("dimension", "dimension")])
def test_bad_embeddings_give_one_line_and_no_output(exported_run, tmp_path, capsys, fault, message):
    root, _ = exported_run
    arrays = _broken(_arrays(root), fault)
    path = tmp_path / "in" / "bad.npz"
    path.parent.mkdir()
    np.savez(path, **{k: (v.numpy() if torch.is_tensor(v) else np.array(v)) for k, v in arrays.items()})
    out = tmp_path / "out"
    code = main(["--suite", "shapes", "--data-root", str(root / "shapes"), "--embeddings", str(path),
                 "--out", str(out)])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1 and error.startswith("error: ")
    import re

    assert re.search(message, error), error
    assert not out.exists()


def test_arrays_in_memory_without_baselines(exported_run, tmp_path):
    root, results = exported_run
    arrays = _arrays(root)
    order = list(reversed(range(len(arrays["pair_ids"]))))  # any row order: matched by id
    result = score_embeddings("shapes", "val", arrays["gallery_ids"], arrays["gallery"].numpy(),
                              [arrays["pair_ids"][i] for i in order], arrays["composed"][order],
                              data_root=str(root / "shapes"), out=str(tmp_path), name="mine")
    assert list(result["metrics"]) == ["composed f(q,t)"]
    assert result["metrics"]["composed f(q,t)"] == results["val"]["metrics"]["composed f(q,t)"]
    assert result["intervals"]["paired"] == {}


@pytest.fixture(scope="module")
def cirr_annotations_only(tmp_path_factory):
    """Real CIRR val annotations with no image at all (what someone who embedded
    elsewhere has) and random unit embeddings for its ids."""
    import shutil

    from tests.conftest import CIRR_ANNOTATIONS

    root = tmp_path_factory.mktemp("cirr_no_images")
    for folder in ("captions", "image_splits"):
        shutil.copytree(CIRR_ANNOTATIONS / folder, root / folder)
    gallery_ids = list(json.loads((root / "image_splits/split.rc2.val.json").read_text()))
    pair_ids = [c["pairid"] for c in json.loads((root / "captions/cap.rc2.val.json").read_text())]
    rng = np.random.default_rng(0)

    def unit(n):
        x = rng.normal(size=(n, 16)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    path = root / "mine.npz"
    np.savez(path, gallery=unit(len(gallery_ids)), composed=unit(len(pair_ids)), gallery_ids=np.array(gallery_ids),
             pair_ids=np.array(pair_ids))
    return root, path


def test_score_without_images_writes_the_page_with_ids(cirr_annotations_only, tmp_path):
    root, path = cirr_annotations_only
    out = tmp_path / "out"
    assert main(["--suite", "cirr", "--data-root", str(root), "--split", "val", "--embeddings", str(path),
                 "--out", str(out)]) == 0
    page = next(out.glob("*.html")).read_text()
    assert 'class="missing' in page and "<img class" not in page.split("Successes")[-1]
    result = json.loads(next(out.glob("cirr_val_mine.json")).read_text())
    assert result["protocol"]["fingerprint"]["similarity"] == "cosine (one vector each)"


def test_a_wrong_id_leaves_the_output_folder_empty(cirr_annotations_only, tmp_path, capsys):
    root, path = cirr_annotations_only
    with np.load(path) as arrays:
        broken = {k: arrays[k] for k in arrays.files}
    broken["pair_ids"] = np.array([*broken["pair_ids"][:-1], 999999999])
    np.savez(tmp_path / "bad.npz", **broken)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["--suite", "cirr", "--data-root", str(root), "--split", "val", "--embeddings",
                 str(tmp_path / "bad.npz"), "--out", str(out)]) == 2
    assert "999999999" in capsys.readouterr().err and list(out.iterdir()) == []


def test_a_failure_while_writing_writes_nothing(cirr_annotations_only, tmp_path, monkeypatch):
    """Past the checks: the per-query file is written before the page fails; neither stays,
    nor the folder the command made, and an earlier result of the same name is kept."""
    import harness.outputs

    root, path = cirr_annotations_only

    def broken_page(*args, **kwargs):
        raise OSError("disk full")

    out = tmp_path / "new" / "out"
    monkeypatch.setattr(harness.outputs, "run_html", broken_page)
    with pytest.raises(OSError):
        main(["--suite", "cirr", "--data-root", str(root), "--embeddings", str(path), "--out", str(out)])
    assert not (tmp_path / "new").exists()
    earlier = tmp_path / "kept"
    earlier.mkdir()
    (earlier / "cirr_val_mine.json").write_text("{}")
    with pytest.raises(OSError):
        main(["--suite", "cirr", "--data-root", str(root), "--embeddings", str(path), "--out", str(earlier)])
    assert [p.name for p in earlier.iterdir()] == ["cirr_val_mine.json"]
    assert (earlier / "cirr_val_mine.json").read_text() == "{}"


def test_vectors_that_are_not_unit_length_are_called_a_dot_product(cirr_annotations_only, tmp_path):
    root, path = cirr_annotations_only
    with np.load(path) as arrays:
        scaled = {k: arrays[k] for k in arrays.files}
    scaled["gallery"] = scaled["gallery"] * 2.0
    np.savez(tmp_path / "scaled.npz", **scaled)
    for extra, expected in (([], "dot product (one vector each, not unit length)"),
                            (["--normalize"], "cosine (one vector each, normalised by harness.score --normalize)")):
        out = tmp_path / f"out{len(extra)}"
        assert main(["--suite", "cirr", "--data-root", str(root), "--embeddings", str(tmp_path / "scaled.npz"),
                     "--out", str(out), *extra]) == 0
        result = json.loads(next(out.glob("cirr_val_scaled.json")).read_text())
        assert result["protocol"]["fingerprint"]["similarity"] == expected
