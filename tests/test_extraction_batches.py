"""Extraction over N ranks gives one process's embeddings bit for bit: every item is
embedded in the batch one process puts it in (harness/evaluation/embed.py
`rank_batches`), beside the same items and with the same caption padding."""

from __future__ import annotations

import numpy as np
import torch

from harness.evaluation.embed import _assemble, _encode_shard, rank_batches
from harness.evaluation.partial_embeddings import PartialEmbeddings
from harness.suites.shapes import ShapesSuite, ensure_dataset
from harness.suites.shapes_generator import ShapesSpec

SPEC = ShapesSpec(seed=2, image_size=32, sets={"train": 2, "val": 7, "test1": 2},
                  queries_per_set={"train": 2, "val": 3, "test1": 2})


class BatchSensitive:
    """A backbone whose every output depends on what shares its batch, as a real model's
    does in its last bits (captions padded to the batch's longest, batched kernels):
    the batch's mean pixel and longest caption enter every row."""

    image_size = 8

    def preprocess(self, image) -> np.ndarray:
        return np.asarray(image.convert("RGB").resize((8, 8)), dtype=np.uint8)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.float() / 255

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.reshape(len(pixels), 8, -1)[:, :, :4] + pixels.mean()

    def image_embedding_from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 0]

    def query_embedding_from_tokens(self, tokens: torch.Tensor, texts: list[str]) -> torch.Tensor:
        lengths = torch.tensor([float(len(t)) for t in texts])
        return tokens[:, 1] + lengths[:, None] / lengths.max() + len(texts)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        lengths = torch.tensor([float(len(t)) for t in texts])
        return torch.stack([lengths, lengths / lengths.max(), torch.full_like(lengths, len(texts))], 1)


def test_rank_batches_are_one_process_batches_dealt_round_robin():
    assert rank_batches(10, 4, 0, 1) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert rank_batches(10, 4, 0, 2) == [[0, 1, 2, 3], [8, 9]]
    assert rank_batches(10, 4, 1, 2) == [[4, 5, 6, 7]]
    assert rank_batches(10, 4, 2, 3) == [[8, 9]] and rank_batches(3, 4, 1, 2) == []


def embeddings(backbone, data, world: int, batch_size: int, chunks=None, ranks=None) -> dict[str, torch.Tensor]:
    """The split's (image, composed, text) embeddings from `world` ranks' shards (those of
    `ranks`, all by default), assembled as rank 0 does; `chunks`: the batches kept on disk."""
    image_ids = list(dict.fromkeys([*data.gallery, *(q.reference for q in data.queries)]))
    pieces: dict[str, list] = {"image": [], "composed": [], "text": []}
    for rank in range(world) if ranks is None else ranks:
        shard = _encode_shard(backbone, data, image_ids, torch.device("cpu"), "fp32", batch_size, rank, world, chunks)
        for name in pieces:
            pieces[name] += shard.get(name, [])
    sizes = {"image": len(image_ids), "composed": len(data.queries), "text": len(data.queries)}
    return {name: _assemble(items, sizes[name]) for name, items in pieces.items()}


def test_two_and_three_ranks_embed_bit_for_bit_as_one_process(tmp_path):
    ensure_dataset(tmp_path / "shapes", SPEC)
    data = ShapesSuite(tmp_path / "shapes").load("val")
    backbone = BatchSensitive()
    one = embeddings(backbone, data, 1, batch_size=4)
    assert len(set(one["text"][:, 2].tolist())) > 1  # batches of different sizes: rows see their batch
    for world in (2, 3):
        many = embeddings(backbone, data, world, batch_size=4)
        for name in one:
            assert torch.equal(many[name], one[name]), (world, name)


def test_batches_kept_by_one_world_size_resume_another(tmp_path):
    """A batch is the same in any world size, so its file is named by the batch alone: rank
    1 of 2 leaves batches 1 and 3, and one process reads them back, bit for bit."""
    ensure_dataset(tmp_path / "shapes", SPEC)
    data = ShapesSuite(tmp_path / "shapes").load("val")
    backbone = BatchSensitive()
    one = embeddings(backbone, data, 1, batch_size=4)
    embeddings(backbone, data, 2, batch_size=4, chunks=PartialEmbeddings(tmp_path / "partial", 4), ranks=[1])
    kept = PartialEmbeddings(tmp_path / "partial", 4)
    resumed = embeddings(backbone, data, 1, batch_size=4, chunks=kept)
    images = len(one["image"])
    assert kept.resumed["images"] == sum(len(rows) for rows in rank_batches(images, 4, 1, 2)) > 0
    assert kept.resumed["text"] == sum(len(rows) for rows in rank_batches(len(data.queries), 4, 1, 2)) > 0
    assert all(torch.equal(resumed[name], one[name]) for name in one)
