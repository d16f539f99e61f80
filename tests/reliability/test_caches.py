"""Caches: an entry is reused only for the same weights, preprocessing, data, suite
version and precision; concurrent writers and readers never see half an entry."""

from __future__ import annotations

import dataclasses
import multiprocessing
import time

import pytest
import torch

from backbones.blip_tiny import build_random
from harness.evaluation import embedding_cache
from harness.evaluation.embed import SplitEmbeddings
from harness.pipeline import run
from harness.suites import SUITES, cirr_layout
from tests.reliability.faults import fault


@pytest.fixture(scope="module")
def val(small_shapes):
    return SUITES.get("shapes")(small_shapes).load("val")


def changed_identities(val) -> dict[str, dict]:
    backbone = build_random(seed=0)
    base = embedding_cache.identity(backbone, val, "fp32")
    other_weights = build_random(seed=1)
    resized = build_random(seed=0)
    resized.preprocessing = dataclasses.replace(resized.preprocessing, size=32)
    renormalised = build_random(seed=0)
    renormalised.preprocessing = dataclasses.replace(renormalised.preprocessing, mean=(0.5, 0.5, 0.5))
    short_text = build_random(seed=0)
    short_text.max_text_len = 8

    def with_provenance(**changes):
        data = dataclasses.replace(val, provenance={**val.provenance, **changes})
        return embedding_cache.identity(backbone, data, "fp32")

    manifest = val.provenance["manifest"]
    return {
        "base": base,
        "other weights (checkpoint SHA-256)": {**base, "checkpoint_sha256": "0" * 64},
        "random init, other seed": embedding_cache.identity(other_weights, val, "fp32"),
        "image size": embedding_cache.identity(resized, val, "fp32"),
        "normalisation": embedding_cache.identity(renormalised, val, "fp32"),
        "text length": embedding_cache.identity(short_text, val, "fp32"),
        "precision": embedding_cache.identity(backbone, val, "bf16"),
        "caption file": with_provenance(caption_sha256="0" * 64),
        "split file": with_provenance(split_sha256="0" * 64),
        "reader version": with_provenance(reader_version=cirr_layout.READER_VERSION + 1),
        "generator version": with_provenance(manifest={**manifest, "generator_version": 99}),
    }


@fault("Caches", "weights, image size, normalisation, text length, precision, annotation files, "
       "reader or generator version changed", "each gives another cache key: the entry is never reused")
def test_every_input_is_in_the_key(val, tmp_path):
    paths = {name: embedding_cache.cache_path(tmp_path, ident) for name, ident in changed_identities(val).items()}
    assert len(set(paths.values())) == len(paths)


@fault("Caches", "a second run after the suite's reader version is bumped",
       "cache miss: every image encoded again")
def test_suite_version_bump_misses(cached_eval_config, monkeypatch):
    config = cached_eval_config
    assert run(config, argv=[])["timings"]["embedding"]["cache"] == "miss"
    assert run(config, argv=[])["timings"]["embedding"]["cache"] == "hit"
    monkeypatch.setattr(cirr_layout, "READER_VERSION", cirr_layout.READER_VERSION + 1)
    again = run(config, argv=[])["timings"]["embedding"]
    assert again["cache"] == "miss" and again["images_encoded"] > 0


def fake_embeddings(data, seed: int, rows: int = 20_000) -> SplitEmbeddings:
    """About 7 MB per entry, so that a write takes long enough to overlap others."""
    g, q = len(data.gallery), len(data.queries)
    gen = torch.Generator().manual_seed(seed)
    wide = rows // max(g, 1)
    return SplitEmbeddings(list(data.gallery), torch.randn(g, wide, 64, generator=gen),
                           torch.randn(q, 64, generator=gen), torch.randn(q, wide, 64, generator=gen),
                           torch.randn(q, 64, generator=gen), timings={"seed": seed})


def writer(path, ident, data, emb, start, repeats):
    start.wait()
    for _ in range(repeats):
        embedding_cache.save(path, ident, data, emb)


@fault("Caches", "two processes writing the same entry at once (10 times each) while a reader loads it",
       "every load is a complete entry of one writer (never damaged or mixed); no temporary file left")
def test_concurrent_writers_and_a_reader(val, tmp_path):
    ident = embedding_cache.identity(build_random(seed=0), val, "fp32")
    path = embedding_cache.cache_path(tmp_path, ident)
    expected = {seed: fake_embeddings(val, seed) for seed in (1, 2)}
    # fork: the writers only rename files (no torch kernels), and start in milliseconds
    context = multiprocessing.get_context("fork")
    start = context.Barrier(3)
    writers = [context.Process(target=writer, args=(path, ident, val, expected[seed], start, 10))
               for seed in (1, 2)]
    for process in writers:
        process.start()
    start.wait(timeout=120)
    loads = 0
    while any(p.is_alive() for p in writers) or loads == 0:
        existed = path.exists()  # once written, a rename only ever replaces it
        got = embedding_cache.load(path, ident, val)
        if got is None:
            assert not existed, "a complete entry could not be read"
            time.sleep(0.001)
            continue
        loads += 1
        want = expected[got.timings["seed"]]
        for name in embedding_cache.TENSORS:
            assert torch.equal(getattr(got, name), getattr(want, name)), name
    for process in writers:
        process.join(60)
        assert process.exitcode == 0
    assert loads > 0
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
