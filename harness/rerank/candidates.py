"""The second stage's inputs and its scores: each query's first-stage top-K (from the
retrieval core, in the tie rule's order: ties by gallery order), the vision tokens of
the images involved, and the re-ranker's score of every (query, candidate) pair.

A query is scored in one pass over its K candidates: its reference's tokens and its
caption are computed once and shared by the K rows. Vision tokens are kept in a
least-recently-used store bounded in bytes, so a gallery image is encoded once while
it fits. A video item is read from its middle frame (the re-rankers read images).
"""

from __future__ import annotations

import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass

import torch

import coir_kernels
from harness.core import distributed
from harness.core.precision import autocast
from harness.core.progress import progress
from harness.suites.base import SplitData
from harness.suites.image_store import ImageStore

TOKEN_STORE_BYTES = 4 << 30  # vision tokens kept between queries


@dataclass(frozen=True)
class Candidates:
    """Each query's first-stage top-K: gallery indices (K_i,) best first and their scores."""

    index: list[torch.Tensor]
    scores: list[torch.Tensor]


def first_stage(data: SplitData, emb, exclude: torch.Tensor, k: int) -> Candidates:
    """The top `k` of every query's ranking, `exclude` (Q,) removed, within its group's
    sub-gallery where it has one (FashionIQ's category), as the protocol ranks it."""
    index_of = {g: i for i, g in enumerate(emb.gallery_ids)}
    rows_of: dict[str, list[int]] = defaultdict(list)
    for qi, q in enumerate(data.queries):
        rows_of[q.group].append(qi)
    index: list[torch.Tensor] = [torch.empty(0, dtype=torch.long)] * len(data.queries)
    scores: list[torch.Tensor] = [torch.empty(0)] * len(data.queries)
    for group, rows in rows_of.items():
        columns = torch.tensor([index_of[g] for g in data.groups[group]] if group else range(len(index_of)),
                               dtype=torch.long)
        position = torch.full((len(index_of),), -1, dtype=torch.long)
        position[columns] = torch.arange(len(columns))
        picked = exclude[rows]
        local_exclude = torch.where(picked >= 0, position[picked.clamp(min=0)], picked)
        top_scores, top_index = coir_kernels.topk_excluding(emb.composed[rows], emb.gallery[columns], k, local_exclude)
        for r, qi in enumerate(rows):
            index[qi] = columns[top_index[r]]
            scores[qi] = top_scores[r]
    return Candidates(index, scores)


def image_of(data: SplitData, item: str) -> str:
    """The image a re-ranker reads for a gallery item: itself, or a video's middle frame."""
    images = data.images_of(item)
    return images[len(images) // 2]


class VisionTokens:
    """Vision tokens by image id, computed in batches without a graph (eval mode, the
    run's precision) and kept up to `budget_bytes`, least recently used dropped first."""

    def __init__(self, reranker, data: SplitData, image_ids: list[str], device, precision: str, batch_size: int,
                 budget_bytes: int = TOKEN_STORE_BYTES, dtype: torch.dtype = torch.float32):
        self.reranker, self.device, self.precision, self.batch_size = reranker, device, precision, batch_size
        self.dtype, self.budget = dtype, budget_bytes
        self.store = ImageStore(data, reranker.preprocess, reranker.image_size, image_ids)
        self.kept: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.bytes = 0
        self.encoded = 0  # images through the ViT, repeats included

    @torch.no_grad()
    def get(self, image_ids: list[str]) -> torch.Tensor:
        missing = list(dict.fromkeys(i for i in image_ids if i not in self.kept))
        fresh = {}
        model = self.reranker.model
        was_training = model.training
        model.eval()  # tokens as evaluation computes them, also while the re-ranker trains
        for start in range(0, len(missing), self.batch_size):
            ids = missing[start : start + self.batch_size]
            pixels = self.reranker.normalize(self.store.batch(ids).to(self.device)).to(self.dtype)
            with autocast(self.precision, self.device):
                tokens = self.reranker.image_tokens(pixels).to(self.dtype)
            self.encoded += len(ids)
            fresh.update(zip(ids, tokens))
        model.train(was_training)
        out = torch.stack([fresh[i] if i in fresh else self.kept[i] for i in image_ids])
        for image_id, tokens in fresh.items():
            self._keep(image_id, tokens)
        for image_id in image_ids:
            if image_id in self.kept:
                self.kept.move_to_end(image_id)
        return out

    def _keep(self, image_id: str, tokens: torch.Tensor) -> None:
        self.kept[image_id] = tokens
        self.bytes += tokens.numel() * tokens.element_size()
        while self.bytes > self.budget and len(self.kept) > 1:
            _, dropped = self.kept.popitem(last=False)
            self.bytes -= dropped.numel() * dropped.element_size()


@torch.no_grad()
def second_stage(reranker, data: SplitData, gallery_ids: list[str], candidates: Candidates, device,
                 precision: str, batch_size: int) -> tuple[list[torch.Tensor], dict] | None:
    """The re-ranker's score of each query's candidates ((K_i,) float32 each) and the cost.
    Under torchrun each rank scores an interleaved share of the queries and rank 0 gets
    every score; the other ranks get None."""
    rank, world = distributed.rank_and_world()
    mine = list(range(rank, len(data.queries), world))
    needed = [data.queries[qi].reference for qi in mine]
    needed += [image_of(data, gallery_ids[j]) for qi in mine for j in candidates.index[qi].tolist()]
    reranker.model.eval()
    tokens = VisionTokens(reranker, data, list(dict.fromkeys(needed)), device, precision, batch_size)
    started = time.perf_counter()
    scores: dict[int, torch.Tensor] = {}
    for qi in progress(mine, desc=f"re-ranking {data.split} with {reranker.name}", unit="query", disable=rank > 0):
        query = data.queries[qi]
        items = [image_of(data, gallery_ids[j]) for j in candidates.index[qi].tolist()]
        if not items:
            scores[qi] = torch.empty(0)
            continue
        reference, candidate = tokens.get([query.reference]), tokens.get(items)
        with autocast(precision, device):
            scores[qi] = reranker.scores(reference, [query.caption], candidate).float().cpu()
    seconds = time.perf_counter() - started
    gathered = distributed.gather_to_rank0((scores, seconds, tokens.encoded))
    if gathered is None:
        return None
    merged = {qi: s for part, _, _ in gathered for qi, s in part.items()}
    seconds = max(s for _, s, _ in gathered)
    pairs = sum(len(i) for i in candidates.index)
    cost = {"seconds": seconds, "queries": len(data.queries), "ranks": world,
            "queries_per_second": len(data.queries) / max(seconds, 1e-9),
            "cross_encoder_pairs": pairs, "pairs_per_second": pairs / max(seconds, 1e-9),
            "vision_images_encoded": sum(e for _, _, e in gathered)}
    return [merged[qi] for qi in range(len(data.queries))], cost
