"""Embedding a split: gallery images, composed queries, and the two baselines.

Each image (gallery and references) goes through the vision tower once; the
composed queries of a reference are encoded from its tokens while they are in
memory, so tokens are never stored for the whole split.

Under torchrun (or the deepspeed launcher) the images and the captions are cut
into the batches one process makes (`batch_size` consecutive rows each) and batch b
goes to rank b % world (`rank_batches`): every embedding is computed in the batch,
beside the same items and with the same caption padding, as in one process, so the
split's embeddings are bit for bit one process's whatever the number of ranks. Rank
0 gathers the pieces and assembles the split, the other ranks get None.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from backbones.base import Backbone
from harness.core import distributed
from harness.core.precision import autocast, image_tokens
from harness.core.progress import progress
from harness.evaluation.partial_embeddings import PartialEmbeddings
from harness.suites.base import SplitData, frames_of, pool_frames
from harness.suites.image_store import ImageStore


@dataclass
class SplitEmbeddings:
    gallery_ids: list[str]
    gallery: torch.Tensor  # (G, D), or (G, T, D) multi-vector: target / gallery embeddings
    composed: torch.Tensor  # (Q, D) f(q, t)
    image: torch.Tensor | None  # (Q, ...) the reference image's embedding q (image-only baseline)
    text: torch.Tensor | None  # (Q, D) the caption alone t (text-only baseline)
    timings: dict = field(default_factory=dict)
    # (image and text are None only for embeddings made elsewhere without the baselines, harness/score.py)
    # (G,) float32 added to every score of that gallery item: a similarity method's per-item
    # correction (harness/similarity/hubness.py), passed to the kernels as `offset`; None for cosine
    gallery_offset: torch.Tensor | None = None


# Rows of every results table: the composed query and the two single-modality
# baselines, each a SplitEmbeddings attribute.
COMPOSED = "composed f(q,t)"
METHODS = {
    COMPOSED: "composed",
    "image-only q": "image",
    "text-only t": "text",
}


# The final ranking's entry in each per-query record of a two-stage run (harness/rerank/step.py).
RERANKED = "re-ranked (stage 2)"


def methods_of(emb: SplitEmbeddings) -> dict[str, str]:
    """The results rows `emb` can fill: the composed query and the baselines it holds."""
    return {method: attr for method, attr in METHODS.items() if getattr(emb, attr) is not None}


Pieces = dict[str, list[tuple[list[int], torch.Tensor]]]  # name -> [(rows, values)]


@torch.no_grad()
def embed_split(
    backbone: Backbone,
    data: SplitData,
    device: torch.device,
    precision: str,
    batch_size: int = 256,
    partial: Path | None = None,
) -> SplitEmbeddings | None:
    """`partial`: a folder where each finished batch is kept, so that a rerun of an
    interrupted extraction resumes (harness/evaluation/partial_embeddings.py); None keeps nothing."""
    rank, world = distributed.rank_and_world()
    queries = data.queries
    gallery_images = [image for item in data.gallery for image in data.images_of(item)]
    image_ids = list(dict.fromkeys([*gallery_images, *(q.reference for q in queries)]))
    start_time = time.perf_counter()
    chunks = PartialEmbeddings(partial, batch_size) if partial is not None else None
    pieces = _encode_shard(backbone, data, image_ids, device, precision, batch_size, rank, world, chunks)
    seconds = time.perf_counter() - start_time
    resumed = chunks.resumed["images"] if chunks is not None else 0
    gathered = distributed.gather_to_rank0((pieces, seconds, resumed))
    if gathered is None:
        return None
    merged: Pieces = defaultdict(list)
    for part, _, _ in gathered:
        for name, items in part.items():
            merged[name] += items
    seconds = max(s for _, s, _ in gathered)  # ranks run side by side
    images_resumed = sum(r for _, _, r in gathered)
    image_emb = _assemble(merged["image"], len(image_ids))
    row = {image_id: i for i, image_id in enumerate(image_ids)}
    reference_rows = torch.tensor([row[q.reference] for q in queries], dtype=torch.long)
    return SplitEmbeddings(
        gallery_ids=list(data.gallery),
        gallery=pooled_items(data, data.gallery, image_emb, row),
        composed=_assemble(merged["composed"], len(queries)),
        image=image_emb[reference_rows],
        text=_assemble(merged["text"], len(queries)),
        timings={
            "images_encoded": len(image_ids) - images_resumed,
            "images_resumed": images_resumed,
            "ranks": world,
            "seconds": seconds,
            "images_per_second": (len(image_ids) - images_resumed) / max(seconds, 1e-9),
            "queries_per_second": len(queries) / max(seconds, 1e-9),
        },
    )


def pooled_items(data: SplitData, items: list[str], image_emb: torch.Tensor, row: dict[str, int]) -> torch.Tensor:
    """One embedding per item: an image's own, or a video's pooled from its frames
    (`pool_frames`)."""
    if not data.frames:
        return image_emb[[row[i] for i in items]]
    out = torch.empty(len(items), *image_emb.shape[1:])
    for k, item in enumerate(items):
        if item not in data.frames:
            out[k] = image_emb[row[item]]
            continue
        images, weights = frames_of(data.frames, item)
        out[k] = pool_frames(image_emb[[row[f] for f in images]], weights)
    return out


def rank_batches(count: int, batch_size: int, rank: int, world: int) -> list[list[int]]:
    """This rank's batches of rows 0 ... count - 1: the batches of `batch_size`
    consecutive rows one process makes, batch b to rank b % world."""
    starts = range(0, count, batch_size)
    return [list(range(start, min(start + batch_size, count))) for b, start in enumerate(starts) if b % world == rank]


def _encode_shard(backbone, data, image_ids, device, precision, batch_size, rank, world,
                  chunks: PartialEmbeddings | None) -> Pieces:
    queries = data.queries
    by_reference: dict[str, list[int]] = defaultdict(list)
    for qi, q in enumerate(queries):
        by_reference[q.reference].append(qi)
    my_batches = rank_batches(len(image_ids), batch_size, rank, world)
    store = ImageStore(data, backbone.preprocess, backbone.image_size,
                       [image_ids[i] for rows in my_batches for i in rows], preload_limit_bytes=0)
    pieces: Pieces = defaultdict(list)
    for rows in progress(my_batches, desc=f"embedding {data.split}", unit="batch", disable=rank > 0):
        saved = chunks.load("images", rows[0], rows) if chunks is not None else None
        if saved is not None:
            pieces["image"].append((rows, saved["image"]))
            if "composed" in saved:
                pieces["composed"].append((saved["composed_rows"].tolist(), saved["composed"]))
            continue
        batch_ids = [image_ids[i] for i in rows]
        pixels = backbone.normalize(store.batch(batch_ids).to(device))
        batch: Pieces = defaultdict(list)
        tokens = image_tokens(backbone, pixels, precision, device)
        with autocast(precision, device):
            batch["image"].append((rows, backbone.image_embedding_from_tokens(tokens).float().cpu()))
            pairs = [(qi, local) for local, i in enumerate(batch_ids) for qi in by_reference.get(i, ())]
            for sub in range(0, len(pairs), batch_size):
                chunk = pairs[sub : sub + batch_size]
                query_rows = [qi for qi, _ in chunk]
                locals_ = torch.tensor([local for _, local in chunk], device=tokens.device)
                captions = [queries[qi].caption for qi in query_rows]
                composed = backbone.query_embedding_from_tokens(tokens[locals_], captions)
                batch["composed"].append((query_rows, composed.float().cpu()))
        for name, items in batch.items():
            pieces[name] += items
        if chunks is not None:
            tensors = {"image": batch["image"][0][1]}
            if batch["composed"]:
                tensors["composed"] = torch.cat([values for _, values in batch["composed"]])
                tensors["composed_rows"] = torch.tensor([r for rs, _ in batch["composed"] for r in rs])
            chunks.save("images", rows[0], rows, tensors)
    pieces["text"] = _encode_texts(backbone, queries, device, precision, batch_size, rank, world, chunks)
    return dict(pieces)


def _encode_texts(backbone, queries, device, precision, batch_size, rank, world,
                  chunks: PartialEmbeddings | None) -> list[tuple[list[int], torch.Tensor]]:
    """The text-only baseline of this rank's batches of captions (padded to the longest of the batch)."""
    out = []
    with autocast(precision, device):
        for rows in rank_batches(len(queries), batch_size, rank, world):
            saved = chunks.load("text", rows[0], rows) if chunks is not None else None
            if saved is None:
                text = backbone.encode_text([queries[qi].caption for qi in rows]).float().cpu()
                if chunks is not None:
                    chunks.save("text", rows[0], rows, {"text": text})
            out.append((rows, text if saved is None else saved["text"]))
    return out


def _assemble(items: list[tuple[list[int], torch.Tensor]], total: int) -> torch.Tensor:
    """One (total, ...) tensor from (rows, values) pieces that cover every row."""
    if not items:
        return torch.empty(0, 0)
    out = torch.empty(total, *items[0][1].shape[1:], dtype=torch.float32)
    for rows, values in items:
        out[rows] = values
    return out
