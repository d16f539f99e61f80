"""Embedding a split: gallery images, composed queries, and the two baselines.

Each image (gallery and references) goes through the vision tower once; the
composed queries of a reference are encoded from its tokens while they are in
memory, so tokens are never stored for the whole split.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from backbones.base import Backbone
from harness.images import ImageStore
from harness.precision import autocast
from harness.progress import progress
from harness.suites.base import SplitData


@dataclass
class SplitEmbeddings:
    gallery_ids: list[str]
    gallery: torch.Tensor  # (G, D) target / gallery embeddings
    composed: torch.Tensor  # (Q, D) f(q, t)
    image: torch.Tensor  # (Q, D) the reference image's embedding q (image-only baseline)
    text: torch.Tensor  # (Q, D) the caption alone t (text-only baseline)
    timings: dict = field(default_factory=dict)


@torch.no_grad()
def embed_split(
    backbone: Backbone,
    data: SplitData,
    device: torch.device,
    precision: str,
    batch_size: int = 256,
) -> SplitEmbeddings:
    queries = data.queries
    image_ids = list(dict.fromkeys([*data.gallery, *(q.reference for q in queries)]))
    row = {image_id: i for i, image_id in enumerate(image_ids)}
    by_reference: dict[str, list[int]] = defaultdict(list)
    for qi, q in enumerate(queries):
        by_reference[q.reference].append(qi)

    store = ImageStore(data, backbone, image_ids, preload_limit_bytes=0)
    # Shapes come from the first batch: (N, D), or (N, T, D) for multi-vector backbones.
    image_emb = composed = text = None
    start_time = time.perf_counter()
    for start in progress(range(0, len(image_ids), batch_size), desc=f"embedding {data.split}", unit="batch"):
        batch_ids = image_ids[start : start + batch_size]
        pixels = backbone.normalize(store.batch(batch_ids).to(device))
        with autocast(precision, device):
            tokens = backbone.image_tokens(pixels)
            batch_emb = backbone.image_embedding_from_tokens(tokens).cpu()
            image_emb = _filled(image_emb, len(image_ids), batch_emb, start)
            pairs = [(qi, local) for local, i in enumerate(batch_ids) for qi in by_reference.get(i, ())]
            for sub in range(0, len(pairs), batch_size):
                chunk = pairs[sub : sub + batch_size]
                rows = [qi for qi, _ in chunk]
                locals_ = torch.tensor([local for _, local in chunk], device=tokens.device)
                captions = [queries[qi].caption for qi in rows]
                query_emb = backbone.query_embedding_from_tokens(tokens[locals_], captions).cpu()
                composed = _filled(composed, len(queries), query_emb, rows)
    image_seconds = time.perf_counter() - start_time

    start_time = time.perf_counter()
    with autocast(precision, device):
        for start in range(0, len(queries), batch_size):
            captions = [q.caption for q in queries[start : start + batch_size]]
            text = _filled(text, len(queries), backbone.encode_text(captions).cpu(), start)
    text_seconds = time.perf_counter() - start_time

    reference_rows = torch.tensor([row[q.reference] for q in queries], dtype=torch.long)
    empty = torch.empty(0, backbone.embed_dim)
    return SplitEmbeddings(
        gallery_ids=list(data.gallery),
        gallery=image_emb[: len(data.gallery)],
        composed=composed if composed is not None else empty,
        image=image_emb[reference_rows] if len(queries) else empty,
        text=text if text is not None else empty,
        timings={
            "images_encoded": len(image_ids),
            "image_and_query_seconds": image_seconds,
            "text_seconds": text_seconds,
            "images_per_second": len(image_ids) / max(image_seconds, 1e-9),
            "queries_per_second": len(queries) / max(image_seconds + text_seconds, 1e-9),
        },
    )


def _filled(buffer: torch.Tensor | None, rows: int, values: torch.Tensor, where) -> torch.Tensor:
    """Write `values` into `buffer` at `where` (a start row or a list of rows),
    allocating the (rows, ...) float32 buffer on first use."""
    if buffer is None:
        buffer = torch.empty(rows, *values.shape[1:], dtype=torch.float32)
    if isinstance(where, int):
        buffer[where : where + len(values)] = values
    else:
        buffer[where] = values
    return buffer
