"""Embedding a split: gallery images, composed queries, and the two baselines.

Each image (gallery and references) goes through the vision tower once; the
composed queries of a reference are encoded from its tokens while they are in
memory, so tokens are never stored for the whole split.

Under torchrun (or the deepspeed launcher) every rank encodes an interleaved
shard of the images and captions; rank 0 gathers the pieces and assembles the
split, the other ranks get None.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from backbones.base import Backbone
from harness import distributed
from harness.images import ImageStore
from harness.precision import autocast
from harness.progress import progress
from harness.suites.base import SplitData


@dataclass
class SplitEmbeddings:
    gallery_ids: list[str]
    gallery: torch.Tensor  # (G, D), or (G, T, D) multi-vector: target / gallery embeddings
    composed: torch.Tensor  # (Q, D) f(q, t)
    image: torch.Tensor  # (Q, ...) the reference image's embedding q (image-only baseline)
    text: torch.Tensor  # (Q, D) the caption alone t (text-only baseline)
    timings: dict = field(default_factory=dict)


Pieces = dict[str, list[tuple[list[int], torch.Tensor]]]  # name -> [(rows, values)]


@torch.no_grad()
def embed_split(
    backbone: Backbone,
    data: SplitData,
    device: torch.device,
    precision: str,
    batch_size: int = 256,
) -> SplitEmbeddings | None:
    rank, world = distributed.rank_and_world()
    queries = data.queries
    image_ids = list(dict.fromkeys([*data.gallery, *(q.reference for q in queries)]))
    start_time = time.perf_counter()
    pieces = _encode_shard(backbone, data, image_ids, device, precision, batch_size, rank, world)
    seconds = time.perf_counter() - start_time
    gathered = distributed.gather_to_rank0((pieces, seconds))
    if gathered is None:
        return None
    merged: Pieces = defaultdict(list)
    for part, _ in gathered:
        for name, items in part.items():
            merged[name] += items
    seconds = max(s for _, s in gathered)  # ranks run side by side
    image_emb = _assemble(merged["image"], len(image_ids))
    row = {image_id: i for i, image_id in enumerate(image_ids)}
    reference_rows = torch.tensor([row[q.reference] for q in queries], dtype=torch.long)
    return SplitEmbeddings(
        gallery_ids=list(data.gallery),
        gallery=image_emb[: len(data.gallery)],
        composed=_assemble(merged["composed"], len(queries)),
        image=image_emb[reference_rows],
        text=_assemble(merged["text"], len(queries)),
        timings={
            "images_encoded": len(image_ids),
            "ranks": world,
            "seconds": seconds,
            "images_per_second": len(image_ids) / max(seconds, 1e-9),
            "queries_per_second": len(queries) / max(seconds, 1e-9),
        },
    )


def _encode_shard(backbone, data, image_ids, device, precision, batch_size, rank, world) -> Pieces:
    queries = data.queries
    by_reference: dict[str, list[int]] = defaultdict(list)
    for qi, q in enumerate(queries):
        by_reference[q.reference].append(qi)
    my_rows = list(range(rank, len(image_ids), world))
    store = ImageStore(data, backbone, [image_ids[i] for i in my_rows], preload_limit_bytes=0)
    pieces: Pieces = defaultdict(list)
    batches = range(0, len(my_rows), batch_size)
    for start in progress(batches, desc=f"embedding {data.split}", unit="batch", disable=rank > 0):
        rows = my_rows[start : start + batch_size]
        batch_ids = [image_ids[i] for i in rows]
        pixels = backbone.normalize(store.batch(batch_ids).to(device))
        with autocast(precision, device):
            tokens = backbone.image_tokens(pixels)
            pieces["image"].append((rows, backbone.image_embedding_from_tokens(tokens).float().cpu()))
            pairs = [(qi, local) for local, i in enumerate(batch_ids) for qi in by_reference.get(i, ())]
            for sub in range(0, len(pairs), batch_size):
                chunk = pairs[sub : sub + batch_size]
                query_rows = [qi for qi, _ in chunk]
                locals_ = torch.tensor([local for _, local in chunk], device=tokens.device)
                captions = [queries[qi].caption for qi in query_rows]
                composed = backbone.query_embedding_from_tokens(tokens[locals_], captions)
                pieces["composed"].append((query_rows, composed.float().cpu()))
    my_queries = list(range(rank, len(queries), world))
    with autocast(precision, device):
        for start in range(0, len(my_queries), batch_size):
            rows = my_queries[start : start + batch_size]
            text = backbone.encode_text([queries[qi].caption for qi in rows])
            pieces["text"].append((rows, text.float().cpu()))
    return dict(pieces)


def _assemble(items: list[tuple[list[int], torch.Tensor]], total: int) -> torch.Tensor:
    """One (total, ...) tensor from (rows, values) pieces that cover every row."""
    if not items:
        return torch.empty(0, 0)
    out = torch.empty(total, *items[0][1].shape[1:], dtype=torch.float32)
    for rows, values in items:
        out[rows] = values
    return out
