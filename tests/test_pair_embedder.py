"""The training pairs' embeddings (harness/training/pairs.py): with a trained vision
tower, references and targets go through the tower in one pass, and that gives what
a query and a target embedded on their own give."""

from __future__ import annotations

import torch

from harness.suites.image_store import ImageStore
from harness.training.pairs import PairEmbedder


def test_one_vision_pass_embeds_queries_and_targets_as_apart(tmp_path):
    from backbones.blip_tiny import build_random
    from harness.suites.shapes import ShapesSuite, ensure_dataset
    from harness.suites.shapes_generator import ShapesSpec

    ensure_dataset(tmp_path, ShapesSpec(seed=3, sets={"train": 4, "val": 1, "test1": 1},
                                        queries_per_set={"train": 2, "val": 1, "test1": 1}))
    data = ShapesSuite(tmp_path).load("train")
    rows = [q for q in data.queries if q.target is not None]
    backbone = build_random(seed=1)
    backbone.model.eval()
    store = ImageStore(data, backbone.preprocess, backbone.image_size,
                       [i for q in rows for i in (q.reference, q.target)])
    passes = []
    image_tokens = backbone.image_tokens
    backbone.image_tokens = lambda pixels: passes.append(len(pixels)) or image_tokens(pixels)
    embedder = PairEmbedder(backbone, store, {}, torch.device("cpu"), "fp32", torch.float32,
                            tokens_frozen=False, target_rows=None)
    with torch.no_grad():
        query, target = embedder.for_batch(rows)(0, len(rows))
        assert passes == [2 * len(rows)]
        pixels = backbone.normalize(store.batch([q.reference for q in rows]))
        want_query = backbone.query_embedding_from_tokens(image_tokens(pixels), [q.caption for q in rows])
        want_target = backbone.image_embedding_from_tokens(
            image_tokens(backbone.normalize(store.batch([q.target for q in rows]))))
    pooled = backbone.pooled_for_loss
    torch.testing.assert_close(query, pooled(want_query), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(target, pooled(want_target), rtol=1e-5, atol=1e-6)
