"""The embedding cache: a second run encodes no image; other weights,
preprocessing or data never reuse an entry; damaged files are recomputed."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from backbones.blip import BlipComposer
from backbones.blip_tiny import build_random
from harness.config import RunConfig
from harness.evaluation import embedding_cache
from harness.pipeline import run
from harness.suites.shapes import ensure_dataset
from harness.suites.shapes_generator import ShapesSpec

SMALL = ShapesSpec(seed=1, sets={"train": 4, "val": 12, "test1": 4},
                   queries_per_set={"train": 2, "val": 2, "test1": 2})


@pytest.fixture(scope="module")
def small_shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("small") / "shapes"
    ensure_dataset(root, SMALL)
    return root


def count_vision_calls(monkeypatch) -> list[int]:
    calls = [0]
    original = BlipComposer.image_tokens

    def counting(self, pixels):
        calls[0] += len(pixels)
        return original(self, pixels)

    monkeypatch.setattr(BlipComposer, "image_tokens", counting)
    return calls


def evaluate(root, checkpoint, out):
    config = RunConfig.resolve({"data_root": str(root), "checkpoint": str(checkpoint), "out": str(out),
                                "train": False})
    return run(config, argv=["(cache test)"])


def test_second_run_encodes_no_image_and_new_weights_invalidate(small_shapes, tmp_path, monkeypatch):
    build_random(seed=3).save(tmp_path / "a")
    calls = count_vision_calls(monkeypatch)
    first = evaluate(small_shapes, tmp_path / "a", tmp_path / "out1")
    assert calls[0] > 0 and first["timings"]["embedding"]["cache"] == "miss"
    encoded = calls[0]

    second = evaluate(small_shapes, tmp_path / "a", tmp_path / "out2")
    assert calls[0] == encoded, "the second run must not encode any image"
    assert second["timings"]["embedding"]["cache"] == "hit"
    assert second["metrics"] == first["metrics"]

    other = build_random(seed=3)
    with torch.no_grad():
        other.model.vision_proj.weight.add_(0.01)  # same architecture, other weights
    other.save(tmp_path / "b")
    third = evaluate(small_shapes, tmp_path / "b", tmp_path / "out3")
    assert calls[0] > encoded and third["timings"]["embedding"]["cache"] == "miss"
    assert third["backbone"]["checkpoint_sha256"] != first["backbone"]["checkpoint_sha256"]


def test_identity_covers_preprocessing_and_data(small_shapes):
    from harness.suites import SUITES

    backbone = build_random(seed=0)
    data = SUITES.get("shapes")(small_shapes).load("val")
    base = embedding_cache.identity(backbone, data, "fp32")
    backbone.preprocessing = dataclasses.replace(backbone.preprocessing, mean=(0.5, 0.5, 0.5))
    assert embedding_cache.identity(backbone, data, "fp32") != base
    test1 = SUITES.get("shapes")(small_shapes).load("test1")
    assert embedding_cache.identity(build_random(0), test1, "fp32") != base
    assert embedding_cache.identity(build_random(0), data, "bf16") != base


def test_damaged_or_mismatched_entries_are_recomputed(small_shapes, tmp_path):
    from harness.evaluation.embed import SplitEmbeddings
    from harness.suites import SUITES

    data = SUITES.get("shapes")(small_shapes).load("val")
    backbone = build_random(seed=0)
    q, g = len(data.queries), len(data.gallery)

    def fake(_partial=None):
        return SplitEmbeddings(list(data.gallery), torch.randn(g, 4), torch.randn(q, 4),
                               torch.randn(q, 4), torch.randn(q, 4), timings={})

    first = embedding_cache.cached_embed(fake, backbone, data, "fp32", tmp_path)
    again = embedding_cache.cached_embed(fake, backbone, data, "fp32", tmp_path)
    assert torch.equal(first.gallery, again.gallery) and again.timings["cache"] == "hit"

    path = embedding_cache.cache_path(tmp_path, embedding_cache.identity(backbone, data, "fp32"))
    path.write_bytes(path.read_bytes()[:100])  # truncated, as by a crash mid-copy
    recomputed = embedding_cache.cached_embed(fake, backbone, data, "fp32", tmp_path)
    assert recomputed.timings["cache"] == "miss"
    assert not list(tmp_path.glob(".*.safetensors.*")), "no temporary files left behind"
