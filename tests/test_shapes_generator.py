"""Tests of the synthetic "shapes" CoIR generator (CIRR layout, unambiguous captions)
and the scenes it draws (harness/suites/scenes.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.suites import scenes
from harness.suites import shapes_generator as sg

SPLITS = ("train", "val", "test1")
SMALL = sg.ShapesSpec(seed=0, image_size=32, sets={"train": 20, "val": 10, "test1": 10})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes") / "data"
    sg.generate(root, SMALL)
    return root


def _captions(root: Path, split: str, version: str = "rc2") -> list[dict]:
    return json.loads((root / "captions" / f"cap.{version}.{split}.json").read_text())


def _split_file(root: Path, split: str, version: str = "rc2") -> dict[str, str]:
    return json.loads((root / "image_splits" / f"split.{version}.{split}.json").read_text())


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# ------------------------------------------------------------ an independent caption parser
# Written from the caption grammar, not from the generator's code, so that it checks
# what a reader of the caption would conclude.

SIZE_WORDS = {"small": "small", "large": "large", "big": "large"}
POSITION_NAMES = ("top left", "top right", "bottom left", "bottom right",
                  "top", "bottom", "left", "right", "center")


def _parse_position_phrase(text: str) -> str:
    """ "at the top left" / "on the left" / "in the center" -> position name."""
    preposition, the, position = text.split(" ", 2)
    assert preposition in ("at", "on", "in") and the == "the", text
    assert position in POSITION_NAMES, text
    return position


def _parse_reference(text: str) -> dict:
    """ "the [size] [colour] shape [at the position]" -> attribute constraints."""
    words = text.split()
    assert words[0] == "the", text
    constraints, rest = {}, words[1:]
    if rest[0] in SIZE_WORDS:
        constraints["size"] = SIZE_WORDS[rest.pop(0)]
    if rest[0] in scenes.COLOURS:
        constraints["colour"] = rest.pop(0)
    constraints["shape"] = rest.pop(0)
    assert constraints["shape"] in scenes.SHAPES, text
    if rest:
        constraints["position"] = _parse_position_phrase(" ".join(rest))
    return constraints


def _resolve(scene, text: str):
    """The one object of `scene` the description refers to (asserts it is unique)."""
    constraints = _parse_reference(text)
    found = [o for o in scene if all(getattr(o, k) == v for k, v in constraints.items())]
    assert len(found) == 1, f"{text!r} matches {len(found)} objects of {scene}"
    return found[0]


def _changed(scene, old, **changes):
    return tuple(sorted([o for o in scene if o != old] + [old._replace(**changes)]))


def apply_caption(scene, caption: str):
    """The scene the caption asks for, given the reference scene."""
    verb, rest = caption.split(" ", 1)
    if verb in ("add", "put"):
        article, size, colour, shape, where = rest.split(" ", 4)
        assert article == "a" and colour in scenes.COLOURS and shape in scenes.SHAPES, caption
        position = _parse_position_phrase(where)
        assert position not in {o.position for o in scene}, f"{caption!r}: cell is taken"
        return tuple(sorted(scene + (scenes.Obj(position, shape, colour, SIZE_WORDS[size]),)))
    if verb in ("remove", "take"):
        if verb == "take":
            assert rest.startswith("away "), caption
            rest = rest[len("away "):]
        old = _resolve(scene, rest)
        return tuple(sorted(o for o in scene if o != old))
    if verb in ("move", "shift"):
        text, position = rest.rsplit(" to the ", 1)
        assert position not in {o.position for o in scene}, f"{caption!r}: cell is taken"
        return _changed(scene, _resolve(scene, text), position=position)
    if verb == "turn":
        text, shape = rest.rsplit(" into a ", 1)
        return _changed(scene, _resolve(scene, text), shape=shape)
    if verb == "replace":
        text, new = rest.rsplit(" with a ", 1)
        shape, tail = new.split(" ", 1)
        assert tail == "of the same colour", caption
        return _changed(scene, _resolve(scene, text), shape=shape)
    if caption.startswith("change the colour of "):
        text, colour = caption[len("change the colour of "):].rsplit(" to ", 1)
        return _changed(scene, _resolve(scene, text), colour=colour)
    if verb == "make":
        text, value = rest.rsplit(" ", 1)
        old = _resolve(scene, text)
        if value in scenes.COLOURS:
            return _changed(scene, old, colour=value)
        size = {"bigger": "large", "smaller": "small"}.get(value) or SIZE_WORDS[value]
        assert size != old.size, f"{caption!r}: the size does not change"
        return _changed(scene, old, size=size)
    raise AssertionError(f"caption does not parse: {caption!r}")


# ------------------------------------------------------------ layout


def test_layout(dataset):
    manifest = json.loads((dataset / "manifest.json").read_text())
    pairids = []
    for split in SPLITS:
        gallery = _split_file(dataset, split)
        queries = _captions(dataset, split)
        assert manifest["splits"][split]["images"] == len(gallery)
        assert manifest["splits"][split]["queries"] == len(queries) == SMALL.sets[split] * SMALL.queries_per_set[split]
        for image_id, rel in gallery.items():
            assert (dataset / rel).is_file(), rel
            folder = {"train": "./train/", "val": "./dev/", "test1": "./test1/"}[split]
            assert rel.startswith(folder) and rel.endswith(f"/{image_id}.png"), rel
            assert image_id.startswith({"train": "train-", "val": "dev-", "test1": "test1-"}[split])
        for q in queries:
            pairids.append(q["pairid"])
            members = q["img_set"]["members"]
            assert len(members) == 6 and len(set(members)) == 6
            assert set(members) <= set(gallery) and q["reference"] in gallery
            assert members[q["img_set"]["reference_rank"]] == q["reference"]
            if split == "test1":  # as real CIRR test1: no targets at all
                assert "target_hard" not in q and "target_soft" not in q
                assert "target_rank" not in q["img_set"]
            else:
                assert q["target_hard"] in gallery and q["target_hard"] != q["reference"]
                assert q["target_soft"] == {q["target_hard"]: 1.0}
                assert members[q["img_set"]["target_rank"]] == q["target_hard"]
    assert len(pairids) == len(set(pairids))


def test_train_images_in_numbered_subfolders(tmp_path):
    spec = sg.ShapesSpec(image_size=16, sets={"train": 120}, queries_per_set={"train": 1})
    sg.generate(tmp_path / "d", spec)
    folders = {rel.split("/")[2] for rel in _split_file(tmp_path / "d", "train").values()}
    assert folders == {"0", "1"}


def test_images_are_rgb_of_image_size(dataset):
    for split in SPLITS:
        for rel in list(_split_file(dataset, split).values())[:10]:
            with Image.open(dataset / rel) as image:
                assert image.format == "PNG" and image.mode == "RGB"
                assert image.size == (SMALL.image_size, SMALL.image_size)


def test_manifest_is_described_spec(dataset):
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert sg.matches(manifest, SMALL)
    assert not sg.matches(manifest, sg.ShapesSpec(seed=1, image_size=32, sets=SMALL.sets))
    described = sg.describe(SMALL)
    assert {k: v for k, v in manifest.items() if k != "splits"} == {k: v for k, v in described.items() if k != "splits"}


# ------------------------------------------------------------ determinism


def test_deterministic(dataset, tmp_path):
    again = tmp_path / "again"
    sg.generate(again, SMALL)
    for path in sorted(dataset.rglob("*.json")):
        assert path.read_bytes() == (again / path.relative_to(dataset)).read_bytes(), path
    for split in SPLITS:
        for rel in list(_split_file(dataset, split).values())[::7]:
            assert np.array_equal(_pixels(dataset / rel), _pixels(again / rel)), rel


def test_different_seed_differs(dataset, tmp_path):
    other = tmp_path / "other"
    sg.generate(other, sg.ShapesSpec(seed=1, image_size=32, sets=SMALL.sets))
    assert _captions(dataset, "train") != _captions(other, "train")


def test_smaller_spec_is_a_prefix(dataset):
    plan = sg.plan_split(sg.ShapesSpec(image_size=32, sets={"train": 4}), "train")
    assert plan.queries == _captions(dataset, "train")[: len(plan.queries)]


# ------------------------------------------------------------ scenes and captions


def test_plan_matches_files_and_pixels(dataset):
    for split in SPLITS:
        plan = sg.plan_split(SMALL, split)
        assert plan.paths == _split_file(dataset, split)
        assert plan.queries == _captions(dataset, split)
        # One id per scene and one scene per id: the gallery has no duplicate images.
        assert len(set(plan.scenes.values())) == len(plan.scenes)
        for image_id in list(plan.scenes)[::5]:
            rendered = np.asarray(scenes.render_scene(plan.scenes[image_id], SMALL.image_size))
            assert np.array_equal(rendered, _pixels(dataset / plan.paths[image_id])), image_id


def test_caption_and_reference_determine_target(dataset):
    for split in SPLITS:
        scenes = sg.plan_split(SMALL, split).scenes
        for q in _captions(dataset, split):
            reference = scenes[q["reference"]]
            wanted = apply_caption(reference, q["caption"])
            consistent = [m for m in q["img_set"]["members"] if scenes[m] == wanted]
            assert len(consistent) == 1, q
            if "target_hard" in q:
                assert consistent == [q["target_hard"]], q


def test_scenes_are_well_formed(dataset):
    for split in SPLITS:
        for scene in sg.plan_split(SMALL, split).scenes.values():
            assert 1 <= len(scene) <= scenes.MAX_OBJECTS
            assert list(scene) == sorted(scene)
            assert len({o.position for o in scene}) == len(scene)  # one object per cell


def _one_attribute_apart(a, b) -> bool:
    only_a, only_b = set(a) - set(b), set(b) - set(a)
    if len(only_a) != 1 or len(only_b) != 1:
        return False
    (x,), (y,) = only_a, only_b
    return sum(u != v for u, v in zip(x, y, strict=True)) == 1


def test_every_set_has_hard_negatives(dataset):
    for split in SPLITS:
        scenes = sg.plan_split(SMALL, split).scenes
        for q in _captions(dataset, split)[:: SMALL.queries_per_set[split]]:
            members = [m for m in q["img_set"]["members"] if m != q["reference"]]
            pairs = [(a, b) for i, a in enumerate(members) for b in members[i + 1:]]
            assert any(_one_attribute_apart(scenes[a], scenes[b]) for a, b in pairs), q


def test_captions_use_only_vocabulary(dataset):
    vocabulary = set(scenes.VOCABULARY)
    assert all(w.isalpha() and w.islower() for w in vocabulary)
    for split in SPLITS:
        for q in _captions(dataset, split):
            assert set(q["caption"].split()) <= vocabulary, q["caption"]
            assert q["caption"] == " ".join(q["caption"].split())


def test_every_edit_kind_and_phrasing_occurs():
    plan = sg.plan_split(sg.ShapesSpec(sets={"train": 200}), "train")
    verbs = {q["caption"].split()[0] for q in plan.queries}
    assert verbs == {"make", "change", "turn", "replace", "add", "put", "remove", "take", "move", "shift"}


# ------------------------------------------------------------ atomic replacement


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_failed_generation_leaves_root_untouched(tmp_path, monkeypatch):
    tiny = sg.ShapesSpec(image_size=16, sets={"train": 3, "val": 2, "test1": 2})
    root = tmp_path / "data"
    sg.generate(root, tiny)
    before = _snapshot(root)

    real_render, calls = scenes.render_scene, []

    def failing_render(scene, size):
        calls.append(scene)
        if len(calls) == 20:  # partway through the second split
            raise RuntimeError("disk full")
        return real_render(scene, size)

    monkeypatch.setattr(sg, "render_scene", failing_render)
    with pytest.raises(RuntimeError, match="disk full"):
        sg.generate(root, sg.ShapesSpec(seed=5, image_size=16, sets=tiny.sets))
    assert _snapshot(root) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no tmp dir left

    monkeypatch.setattr(sg, "render_scene", real_render)
    manifest = sg.generate(root, sg.ShapesSpec(seed=5, image_size=16, sets=tiny.sets))
    assert json.loads((root / "manifest.json").read_text()) == manifest
    assert manifest["seed"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # old copy removed


def test_bad_spec_is_rejected(tmp_path):
    with pytest.raises(ValueError):
        sg.generate(tmp_path / "d", sg.ShapesSpec(sets={"dev": 3}))
    with pytest.raises(ValueError):
        sg.generate(tmp_path / "d", sg.ShapesSpec(sets={"val": 3}, queries_per_set={"val": 6}))
    assert not (tmp_path / "d").exists()
