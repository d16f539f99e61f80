"""--token-pooling: how BLIP-2's multi-vector features meet, per suite as CoVR-2's
code does (max over token pairs on CIRR; the token mean, not re-normalised, on
FashionIQ, CIRCO and WebVid-CoVR), checked against plain numpy
(harness/evaluation/token_pooling.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backbones.blip2 import build_tiny_blip2
from harness.config import RunConfig
from harness.evaluation.embed import SplitEmbeddings
from harness.evaluation.protocols import ScoringRules
from harness.evaluation.token_pooling import (
    COSINE,
    MAX_OVER_PAIRS,
    MEAN_OF_TOKENS,
    pooled,
    similarity_name,
)
from harness.pipeline import run
from harness.reports.run import paper_differences
from harness.score import score_embeddings
from harness.suites import SUITES, webvid_generator
from harness.suites.shapes import ensure_dataset
from harness.suites.shapes_generator import ShapesSpec
from harness.suites.webvid_generator import WebVidSpec

TOKENS, DIM = 4, 8


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def numpy_scores(query: np.ndarray, gallery: np.ndarray, rule: str) -> np.ndarray:
    """(Q, G) as CoVR-2 computes them: einsum then max over both token axes, or the
    normalised tokens averaged (not re-normalised) and multiplied."""
    if rule == "max":
        return np.einsum("qsd,gtd->qgst", query, gallery).max(axis=(2, 3))
    return _unit(query).mean(axis=1) @ _unit(gallery).mean(axis=1).T


@pytest.fixture(scope="module")
def small_shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("pooling") / "shapes"
    ensure_dataset(root, ShapesSpec(seed=3, image_size=32, sets={"train": 2, "val": 12, "test1": 2},
                                    queries_per_set={"train": 1, "val": 3, "test1": 1}))
    return root


def clear_problem(data, seed: int = 0):
    """Random unit tokens for the split, redrawn until no gallery item scores within
    1e-5 of a target under either rule (fp32 error here is ~1e-7): the counts then
    hold on any machine."""
    index = {g: i for i, g in enumerate(data.gallery)}
    while True:
        rng = np.random.default_rng(seed)
        gallery = _unit(rng.normal(size=(len(data.gallery), TOKENS, DIM))).astype(np.float32)
        composed = _unit(rng.normal(size=(len(data.queries), TOKENS, DIM))).astype(np.float32)
        gaps = []
        for rule in ("max", "mean"):
            scores = numpy_scores(composed.astype(np.float64), gallery.astype(np.float64), rule)
            for i, q in enumerate(data.queries):
                others = np.delete(scores[i], [index[q.reference], index[q.target]])
                gaps.append(np.abs(others - scores[i, index[q.target]]).min())
        if min(gaps) > 1e-5:
            return gallery, composed
        seed += 1


@pytest.mark.parametrize("rule", ["max", "mean"])
def test_both_rules_equal_plain_numpy(small_shapes, tmp_path, rule):
    data = SUITES.get("shapes")(small_shapes).load("val")
    gallery, composed = clear_problem(data)
    result = score_embeddings("shapes", "val", data.gallery, gallery, [q.pair_id for q in data.queries], composed,
                              data_root=str(small_shapes), out=str(tmp_path), rules=ScoringRules(token_pooling=rule))
    scores = numpy_scores(composed.astype(np.float64), gallery.astype(np.float64), rule)
    index = {g: i for i, g in enumerate(data.gallery)}
    ranks = [int((np.delete(scores[i], index[q.reference]) > scores[i, index[q.target]]).sum())
             for i, q in enumerate(data.queries)]
    for k in (1, 5, 10, 50):
        assert result["metrics"]["composed f(q,t)"][f"R@{k}"] == pytest.approx(100 * np.mean(np.array(ranks) < k))
    assert result["protocol"]["token_pooling"] == rule
    assert result["protocol"]["fingerprint"]["token_pooling"] == rule
    assert result["protocol"]["fingerprint"]["similarity"] == (MAX_OVER_PAIRS if rule == "max" else MEAN_OF_TOKENS)


def test_mean_is_one_vector_and_single_vectors_pass_through():
    tokens = torch.randn(3, TOKENS, DIM)
    emb = SplitEmbeddings(["a", "b", "c"], tokens, tokens[:2], tokens[:2], torch.randn(2, DIM))
    mean = pooled(emb, "mean")
    assert mean.gallery.shape == (3, DIM) and mean.image.shape == (2, DIM) and mean.text is emb.text
    expected = torch.nn.functional.normalize(tokens, dim=-1).mean(1)
    assert torch.allclose(mean.gallery, expected) and mean.gallery.norm(dim=-1).max() < 1  # not re-normalised
    assert pooled(emb, "max") is emb
    single = SplitEmbeddings(["a"], torch.ones(1, DIM) / DIM**0.5, torch.ones(1, DIM) / DIM**0.5, None, None)
    assert pooled(single, "mean") is single and similarity_name(single, "mean") == COSINE


def test_similarity_is_named_by_what_was_computed():
    unit = torch.nn.functional.normalize(torch.randn(4, DIM), dim=-1)
    raw = SplitEmbeddings(list("abcd"), 3 * unit, unit, None, None)
    assert similarity_name(raw, "max") == "dot product (one vector each, not unit length)"
    assert similarity_name(raw, "max", "harness.score --normalize").startswith("cosine")
    assert similarity_name(SplitEmbeddings(list("abcd"), unit, unit, None, None), "max") == COSINE


def test_the_paper_difference_names_the_rule():
    fingerprint = {"suite": "cirr", "split": "test1", "token_pooling": "mean", "similarity": MEAN_OF_TOKENS}
    result = {"protocol": {"suite": "cirr", "fingerprint": fingerprint}}
    lines = [line for line in paper_differences(result) if "CoVR-BLIP-2" in line]
    assert lines and "token_pooling: mean vs max" in lines[0]


@pytest.mark.slow
def test_tiny_blip2_pools_by_suite(tmp_path, small_shapes):
    """A tiny BLIP-2 scores generated FashionIQ, CIRCO and WebVid-CoVR by token means
    and CIRR-protocol shapes by max over token pairs, unless told otherwise."""
    build_tiny_blip2(seed=0, num_query_tokens=TOKENS).save(tmp_path / "blip2")
    common = {"backbone": "blip2", "checkpoint": str(tmp_path / "blip2"), "train": False, "cache": False,
              "out": str(tmp_path / "out"), "threads": 2}
    clips = tmp_path / "webvid"
    webvid_generator.generate(clips, WebVidSpec(image_size=32, references={"train": 2, "val": 2, "test": 8}))
    roots = {"shapes": {"data_root": str(small_shapes)}, "webvid-covr": {"data_root": str(clips)}}
    expected = {"fashioniq": "mean", "circo": "mean", "webvid-covr": "mean", "shapes": "max"}
    for suite, rule in expected.items():
        root = roots.get(suite, {})
        protocol = run(RunConfig.resolve({**common, **root, "suite": suite}), argv=["(test run)"])["protocol"]
        assert protocol["token_pooling"] == rule, suite
        assert protocol["fingerprint"]["similarity"] == (MEAN_OF_TOKENS if rule == "mean" else MAX_OVER_PAIRS)
    overridden = run(RunConfig.resolve({**common, "suite": "shapes", "data_root": str(small_shapes),
                                        "token_pooling": "mean"}), argv=["(test run)"])
    assert overridden["protocol"]["fingerprint"]["similarity"] == MEAN_OF_TOKENS
