"""GeneCIS (harness/suites/genecis*.py, harness/evaluation/protocols/genecis.py), on
generated files in GeneCIS's exact JSON format (its own files are CC-BY-NC: no copy
here): malformed records name their file and index, the crop is vaw_dataset.py's, every
image is checked up front, and the protocol matches a brute-force count per task over
each template's own gallery (ties, a shared candidate, a target listed twice)."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from harness.core.errors import HarnessError
from harness.evaluation.embed import SplitEmbeddings
from harness.evaluation.protocols import PROTOCOLS, ScoringRules
from harness.suites import genecis, genecis_generator
from harness.suites.base import Query, SplitData
from harness.suites.cirr_layout import check_images
from harness.suites.genecis_layout import crop_box, cropped, read_task
from harness.suites.scenes import base_scene, render_scene

SMALL = genecis_generator.GeneCISSpec(templates=3, gallery=5, train_sets=0)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("genecis") / "data"
    genecis_generator.generate(root, SMALL)
    return root


def test_splits_are_the_four_tasks_or_all(small_root):
    suite = genecis.GeneCISSuite(small_root)
    data = suite.load("all")
    assert [q.group for q in data.queries] == [t for t in genecis.TASKS for _ in range(3)]
    assert [len(c) for c in data.candidates["gallery"]] == [6] * 12  # the target and 5 gallery images
    targets = [data.gallery[c[0]] for c in data.candidates["gallery"]]
    assert targets == [q.target for q in data.queries]  # the target first, as GeneCIS's loaders place it
    one = suite.load("change_object")
    assert {q.group for q in one.queries} == {"change_object"} and len(one.queries) == 3
    assert all(item.startswith("coco/") for item in one.gallery)
    with pytest.raises(HarnessError, match="no train split"):
        suite.load("train")


def _write(path, records) -> None:
    path.write_text(json.dumps(records))


GOOD_OBJECT = {"reference": {"val_image_id": 1}, "target": {"val_image_id": 2},
               "gallery": [{"val_image_id": 3}], "condition": "wall"}
GOOD_ATTRIBUTE = {"reference": {"image_id": "7", "instance_bbox": [1, 2, 3, 4]},
                  "target": {"image_id": 8, "instance_bbox": [1, 2, 3, 4]},
                  "gallery": [{"image_id": "9", "instance_bbox": [0, 0, 5, 5]}], "condition": "colour"}


@pytest.mark.parametrize("task,record,message", [
    ("focus_object", {**GOOD_OBJECT, "condition": " "}, "condition must be a non-empty string"),
    ("focus_object", {k: v for k, v in GOOD_OBJECT.items() if k != "target"}, "no target"),
    ("focus_object", {**GOOD_OBJECT, "gallery": []}, "gallery must be a non-empty list"),
    ("change_object", {**GOOD_OBJECT, "target": {"val_image_id": "2"}}, "target: val_image_id must be"),
    ("change_object", {**GOOD_OBJECT, "gallery": [{"val_image_id": True}]}, r"gallery\[0\]: val_image_id"),
    ("change_object", {**GOOD_OBJECT, "reference": {"image_id": 1}}, "reference: an object task's image"),
    ("focus_attribute", {**GOOD_ATTRIBUTE, "target": {"image_id": "x1", "instance_bbox": [1, 2, 3, 4]}},
     "image_id must be"),
    ("focus_attribute", {**GOOD_ATTRIBUTE, "reference": {"image_id": 1, "instance_bbox": [1, 2, 3]}},
     "instance_bbox must be"),
    ("change_attribute", {**GOOD_ATTRIBUTE, "gallery": [{"image_id": 1, "instance_bbox": [1, 2, 0, 3]}]},
     "positive width"),
    ("change_attribute", {**GOOD_ATTRIBUTE, "target": {"val_image_id": 3}}, "has image_id and instance_bbox"),
])
def test_malformed_records_name_the_file_and_index(tmp_path, task, record, message):
    path = tmp_path / f"{task}.json"
    good = GOOD_OBJECT if "object" in task else GOOD_ATTRIBUTE
    _write(path, [good, good, record])
    with pytest.raises(HarnessError, match=f"{task}.json, record 2.*{message}"):
        read_task(path, task)


def test_a_file_that_is_not_a_list_of_templates_is_refused(tmp_path):
    path = tmp_path / "focus_object.json"
    path.write_text("{")
    with pytest.raises(HarnessError, match="not valid JSON"):
        read_task(path, "focus_object")
    _write(path, {"templates": []})
    with pytest.raises(HarnessError, match="non-empty list of templates"):
        read_task(path, "focus_object")


def test_the_crop_is_vaw_datasets_by_hand():
    # left = x - 0.7 w, right = left + 1.7 w (the box's own right edge); top likewise
    assert crop_box((50, 40, 20, 10), 200, 100) == pytest.approx((36, 33, 70, 50))
    # clamped at 0, then 1.7 w from there; clamped at the image's size
    assert crop_box((5, 2, 20, 10), 200, 100) == pytest.approx((0, 0, 34, 17))
    assert crop_box((190, 95, 20, 10), 200, 100) == pytest.approx((176, 88, 200, 100))
    image = Image.new("RGB", (200, 100), (255, 255, 255))
    crop = cropped(image, (50, 40, 20, 10))  # 34 x 17, padded to 34 x 34, centred vertically
    assert crop.size == (34, 34)
    pixels = np.asarray(crop)
    assert (pixels[:8] == 0).all() and (pixels[8:25] == 255).all() and (pixels[25:] == 0).all()
    with pytest.raises(ValueError, match="outside"):
        cropped(image, (300, 10, 5, 5))


def test_the_generated_box_crops_back_the_scene():
    scene = base_scene(random.Random(3))
    canvas = Image.new("RGB", (160, 110), (150, 150, 150))
    canvas.paste(render_scene(scene, 64), (41, 17))
    box = tuple(genecis_generator.box_for(41, 17, 64))
    assert np.array_equal(np.asarray(cropped(canvas, box)), np.asarray(render_scene(scene, 64)))


def test_missing_images_and_a_box_outside_its_image_are_reported_up_front(small_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(small_root, root)
    path = root / "genecis" / "change_attribute.json"
    records = json.loads(path.read_text())
    gone = records[0]["target"]["image_id"]
    (root / "VG_100K_all" / f"{gone}.jpg").unlink()
    records[1]["gallery"][0]["instance_bbox"] = [5000, 10, 5, 5]
    _write(path, records)
    first = json.loads((root / "genecis" / "focus_object.json").read_text())[0]["reference"]["val_image_id"]
    (root / "val2017" / f"{first:012d}.jpg").unlink()
    with pytest.raises(HarnessError, match=f"(?s)3 of .* GeneCIS images cannot be used:.*{gone}.jpg.*missing.*outside"):
        genecis.GeneCISSuite(root).load("change_attribute")
    data = genecis.GeneCISSuite(root).load("focus_object")  # a missing COCO image: the pipeline's check_images
    with pytest.raises(HarnessError, match="missing or unreadable"):
        check_images(data, [q.reference for q in data.queries])


def _hand_made() -> SplitData:
    """Two tasks; g1 shared by every template; q2 lists its target twice."""
    queries = [Query(0, "r0", "a", "g0", group="focus_object"), Query(1, "r1", "b", "g2", group="focus_object"),
               Query(2, "r2", "c", "g4", group="change_object"), Query(3, "r3", "d", "g1", group="change_object")]
    gallery = ["g0", "g1", "g2", "g3", "g4", "g5"]
    rows = [[0, 1, 3], [2, 1, 3], [4, 1, 4, 0], [1, 5, 2]]
    return SplitData("genecis", "all", queries, gallery, {}, True, "", {},
                     candidates={"gallery": [np.asarray(r) for r in rows]})


def _brute_force(data, emb, k: int) -> dict[str, float]:
    """Per task, the share of templates whose target is within its first K (ties pessimistic)."""
    scores = (emb.composed @ emb.gallery.T).numpy()
    out: dict[str, list[int]] = {}
    for i, q in enumerate(data.queries):
        rows = sorted(set(data.candidates["gallery"][i].tolist()))
        target = scores[i, data.gallery.index(q.target)]
        rank = sum(scores[i, j] >= target for j in rows if data.gallery[j] != q.target)  # others above or tied
        out.setdefault(q.group, []).append(int(rank < k))
    return {t: 100.0 * sum(v) / len(v) for t, v in out.items()}


def test_protocol_matches_a_brute_force_count_per_task():
    data = _hand_made()
    gallery = torch.tensor([[1.0, 0], [1, 0], [0, 1], [0.6, 0.8], [0.8, 0.6], [0, 1]])
    composed = torch.tensor([[1.0, 0], [0, 1], [0.8, 0.6], [0, 1]])
    emb = SplitEmbeddings(list(data.gallery), gallery, composed, composed.flip(1), None)
    protocol = PROTOCOLS.get("genecis")
    metrics = protocol.evaluate(data, emb, ScoringRules(reference="keep"))["composed f(q,t)"]
    assert list(metrics) == [f"{t} R@{k}" for t in ("focus_object", "change_object") for k in (1, 2, 3)] + [
        "avg R@1", "avg R@2", "avg R@3"]
    for k in (1, 2, 3):
        expected = _brute_force(data, emb, k)
        assert {t: metrics[f"{t} R@{k}"] for t in expected} == pytest.approx(expected)
        assert metrics[f"avg R@{k}"] == pytest.approx(sum(expected.values()) / 2)
    # by hand: q0 ties g1 (pessimistic: rank 2), q1 and q2 are first, q3's g1 loses to g5
    assert metrics["focus_object R@1"] == 50.0 and metrics["change_object R@1"] == 50.0
    values = protocol.query_values(data, emb, ScoringRules(reference="keep"))["composed f(q,t)"]
    for name, value in metrics.items():  # the per-query values' mean is each metric
        assert 100.0 * values[name].mean().item() == pytest.approx(value)
    records = protocol.query_records(data, emb, ScoringRules(reference="keep"))
    assert [r["methods"]["composed f(q,t)"]["target_rank"] for r in records] == [2, 1, 1, 3]
    assert records[2]["methods"]["composed f(q,t)"]["top"] == ["g4", "g0", "g1"]  # g4 listed twice: once


def test_zero_shot_run_reports_each_task_and_the_average(tmp_path_factory, tmp_path):
    """blip-tiny fine-tuned one epoch on the shapes set beside a generated GeneCIS, then
    scored zero-shot on all four tasks: R@1/2/3 per task and their average, for the
    composed query and both baselines, with GeneCIS's paper rows in the table."""
    from harness.config import RunConfig
    from harness.pipeline import run

    root = tmp_path_factory.mktemp("genecis-run") / "data"
    genecis_generator.generate(root, genecis_generator.GeneCISSpec(templates=2, gallery=4, train_sets=20))
    result = run(RunConfig.resolve({"suite": "genecis", "data_root": str(root), "out": str(tmp_path), "epochs": 1,
                                    "cache": False}), argv=["(test)"])
    assert result["training"]["trained_on"] == "shapes/train"
    for method in ("composed f(q,t)", "image-only q", "text-only t"):
        assert list(result["metrics"][method])[-3:] == ["avg R@1", "avg R@2", "avg R@3"]
        assert len(result["metrics"][method]) == 15
    assert result["protocol"]["scoring"] == "genecis" and result["protocol"]["reference_removed"] is False
    assert result["protocol"]["mean_candidates"] == 5.0
    markdown = next(tmp_path.glob("genecis_all_*.md")).read_text()
    assert "change_attribute R@3" in markdown and "16.80" in markdown


@pytest.mark.parametrize("reference", ["keep", "remove"])
def test_mixing_sweep_entries_are_the_protocols_figures(small_root, reference, monkeypatch):
    from harness.evaluation.embed import COMPOSED
    from harness.mixing.adapters import MIXERS
    from harness.mixing.grid import mix
    from harness.mixing.parts import heldout_halves, make_part

    monkeypatch.setenv("COIR_COMPILE", "0")
    data = genecis.GeneCISSuite(small_root).load("all")
    rng = np.random.default_rng(0)
    index = {g: i for i, g in enumerate(data.gallery)}
    gallery = rng.normal(size=(len(data.gallery), 8))
    targets = gallery[[index[q.target] for q in data.queries]]
    q, t, f = (torch.tensor(rng.normal(size=targets.shape) + lean * targets, dtype=torch.float32)
               for lean in (0.6, 0.0, 1.5))
    emb = SplitEmbeddings(list(data.gallery), torch.tensor(gallery, dtype=torch.float32), f, q, t)
    mixer, protocol = MIXERS.get("genecis"), PROTOCOLS.get("genecis")
    rules = ScoringRules(reference=reference)
    triples = torch.tensor([(0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (0.2, 0.3, 0.5), (0.6, 0.0, 0.4)])
    for rows in heldout_halves(data, seed=0):
        part = make_part("half", data, emb, mixer.merge, rows)
        metrics, values = mixer.sweep(part, triples, rules)
        assert list(metrics) == mixer.metrics(part)
        for i, weights in enumerate(triples.tolist()):
            mixed = part.embeddings(mix(part.parts, weights))
            assert {m: v[i] for m, v in metrics.items()} == pytest.approx(
                protocol.evaluate(part.data, mixed, rules)[COMPOSED])
            direct = protocol.query_values(part.data, mixed, rules)[COMPOSED]
            for name, v in values.items():
                assert torch.allclose(v[i].double(), direct[name].double())
