"""CLIP runs through the pipeline: --composer resolved and refused where it does not
apply, clip-tiny's contrastive pre-training (cached by content), the fixed composers'
queries, and the composer named in the protocol fingerprint."""

from __future__ import annotations

import random

import pytest
import torch

from harness.config import RunConfig
from harness.core.errors import HarnessError
from harness.pipeline import run
from harness.suites.image_captions import ImageCaptionSpec, load_pairs
from harness.suites.scenes import base_scene, describe_scene
from harness.suites.shapes import ensure_dataset
from harness.suites.shapes_generator import ShapesSpec
from harness.training import clip_stages

SMALL_PRETRAINING = {"epochs": 1, "max_train_queries": 128, "batch_size": 64, "warmup_steps": 0}


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip-shapes") / "shapes"
    ensure_dataset(root, ShapesSpec(seed=3, image_size=64, sets={"train": 4, "val": 10, "test1": 4},
                                    queries_per_set={"train": 2, "val": 3, "test1": 2}))
    return root


def clip_run(root, out, **given) -> dict:
    config = RunConfig.resolve({"backbone": "clip-tiny", "data_root": str(root), "cache": False, "out": str(out),
                                "threads": 1, **SMALL_PRETRAINING, **given})
    return run(config, argv=["(test run)"])


def test_the_composer_is_resolved_for_clip_and_refused_for_blip():
    assert RunConfig.resolve({"backbone": "clip-tiny"}).composer == "sum"
    assert RunConfig.resolve({"backbone": "clip-tiny"}).train  # random weights: pre-trained first
    assert RunConfig.resolve({"backbone": "clip-tiny"}).recipe == "clip-tiny"
    assert RunConfig.resolve({"backbone": "blip-tiny"}).composer is None
    with pytest.raises(HarnessError, match="--composer applies to CLIP backbones"):
        RunConfig.resolve({"backbone": "blip-tiny", "composer": "sum"})
    with pytest.raises(HarnessError, match="Did you mean 'sum'"):
        RunConfig.resolve({"backbone": "clip-tiny", "composer": "summ"})
    with pytest.raises(HarnessError, match="nothing to train"):
        RunConfig.resolve({"backbone": "clip-tiny", "checkpoint": "x/y", "composer": "image", "train": True})
    # the composer is part of what a run computes
    assert RunConfig.resolve({"backbone": "clip-tiny", "composer": "image"}).hash() != \
        RunConfig.resolve({"backbone": "clip-tiny"}).hash()


def test_only_composers_that_train_on_a_suite_read_its_train_split():
    assert not clip_stages.needs_train_split(True, "clip-tiny", "sum")  # pre-training reads generated pairs
    assert not clip_stages.needs_train_split(False, "blip-tiny", None)
    assert clip_stages.needs_train_split(True, "blip-tiny", None)


def test_image_caption_pairs_describe_their_scenes_and_are_seeded(tmp_path):
    rng = random.Random(0)
    scene = base_scene(rng)
    caption = describe_scene(scene, rng)
    assert all(o.shape in caption and o.colour in caption for o in scene)
    first = load_pairs(ImageCaptionSpec(seed=1, images=12), tmp_path / "a")
    again = load_pairs(ImageCaptionSpec(seed=1, images=12), tmp_path / "b")
    other = load_pairs(ImageCaptionSpec(seed=2, images=12), tmp_path / "c")
    assert [q.caption for q in first.queries] == [q.caption for q in again.queries]
    assert [q.caption for q in first.queries] != [q.caption for q in other.queries]
    assert all(q.reference == q.target for q in first.queries)
    assert (tmp_path / "a" / "images" / "0.png").read_bytes() == (tmp_path / "b" / "images" / "0.png").read_bytes()


def test_clip_tiny_pretrains_once_per_seed_and_composes_with_the_named_rule(shapes_root, tmp_path):
    first = clip_run(shapes_root, tmp_path / "a")
    stages = first["training"]["stages"]
    assert list(stages) == ["pretraining"] and "cached" not in stages["pretraining"]
    assert stages["pretraining"]["trained_on"].startswith("image-captions")
    assert first["config"]["composer"] == "sum"
    assert first["protocol"]["fingerprint"]["composer"] == "sum"
    again = clip_run(shapes_root, tmp_path / "b")  # the same seed and settings: the cache's model
    assert again["training"]["stages"]["pretraining"]["cached"] is True
    assert again["metrics"] == first["metrics"]
    assert again["backbone"]["checkpoint"] == first["backbone"]["checkpoint"]
    image = clip_run(shapes_root, tmp_path / "c", composer="image")
    assert image["metrics"]["composed f(q,t)"] == image["metrics"]["image-only q"]
    assert image["protocol"]["fingerprint"]["hash"] != first["protocol"]["fingerprint"]["hash"]
    text = clip_run(shapes_root, tmp_path / "d", composer="text")
    assert text["metrics"]["composed f(q,t)"] == text["metrics"]["text-only t"]
    assert first["metrics"]["composed f(q,t)"] != image["metrics"]["composed f(q,t)"]
    seed1 = clip_run(shapes_root, tmp_path / "e", seed=1)
    assert "cached" not in seed1["training"]["stages"]["pretraining"]


def test_sum_is_the_normalised_sum_of_the_normalised_features():
    from backbones.clip_tiny import build_random

    backbone = build_random(0, "sum")
    pixels = backbone.normalize(torch.randint(0, 255, (2, 64, 64, 3), dtype=torch.uint8))
    texts = ["make the red circle blue", "remove the square"]
    with torch.no_grad():
        query = backbone.encode_query(pixels, texts)
        expected = torch.nn.functional.normalize(backbone.encode_image(pixels) + backbone.encode_text(texts), dim=-1)
    torch.testing.assert_close(query, expected)


def test_an_untrained_combiner_is_refused_and_hashes_apart(shapes_root, tmp_path):
    from backbones.clip_tiny import build_random

    directory = tmp_path / "clip"
    build_random(0, "sum").save(directory)
    with pytest.raises(HarnessError, match="combiner composer has parameters and none are trained"):
        clip_run(shapes_root, tmp_path / "out", checkpoint=str(directory), composer="combiner", train=False)
    hashes = {build_random(0, name).checkpoint_sha256 for name in ("combiner", "sum", "image")}
    assert len(hashes) == 3


def test_the_mixed_embedding_sweeps_over_a_clip_composer(shapes_root, tmp_path):
    """m = w0 q + w1 t + w2 f with f the composer's query, on the simplex grid."""
    block = clip_run(shapes_root, tmp_path, composer="sum", mix=("sweep",), mix_step=0.5)["mixing"]
    assert block["sweep"]["weights"] == [[0.0, 0.0, 1.0], [0.0, 0.5, 0.5], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5],
                                         [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]
    rows = {row["method"]: row for row in block["rows"]}
    assert rows["f alone"]["metrics"]["R@1"] == block["sweep"]["evaluation"]["R@1"][0]
    assert rows["q alone"]["metrics"]["R@1"] == block["sweep"]["evaluation"]["R@1"][-1]
    assert rows["f alone"]["metrics"] != rows["q alone"]["metrics"]
