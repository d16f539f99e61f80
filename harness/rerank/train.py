"""Fine-tuning a re-ranker on hard negatives: each training query's first-stage top K
(the run's first-stage model on the training split), the target and every other
correct or partly correct item (CIRCO's ground truths, CIRR's image-set members with a
positive soft label) taken out, and the first `negatives` of the rest (the hardest, in
first-stage order) kept for the whole training; the loss
is the cross-entropy of the positive among its 1 + negatives candidates (a listwise
softmax over the re-ranker's scores).

The loop is the first stage's (harness/training/loop.py `Trainer`): its engines (plain
torch, DeepSpeed ZeRO), ranks (each rank takes a share of every batch), schedule,
SIGINT / --resume state and atomic checkpoint, with this step in place of the pair
embedder. --grad-cache-chunk splits a rank's share into chunks whose gradients add up:
the loss of one query reads only its own candidates, so chunking is exact.

Candidate-Reranking-CIR trains its stage II with in-batch negatives instead
(src/stage2_train.py lines 205-208: cross-entropy over the batch's B x B logits).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from harness.core import distributed
from harness.core.errors import HarnessError
from harness.core.progress import say
from harness.evaluation.reference_rule import excluded_indices, excluded_items
from harness.rerank.candidates import VisionTokens, first_stage, image_of
from harness.suites.base import SplitData
from harness.training.loop import BatchPlan, Trainer, train_only
from harness.training.pairs import forward_context
from harness.training.settings import TrainSettings

LOSS = "listwise cross-entropy: the positive among 1 + negatives candidates"


def positives_of(query) -> set[str]:
    """Items that must not serve as a query's negatives: its target, its other ground
    truths and the items its soft labels call (partly) correct."""
    return {query.target, *query.ground_truths, *(item for item, label in query.target_soft.items() if label > 0)}


def hard_negatives(data: SplitData, emb, k: int, negatives: int) -> dict[int, list[str]]:
    """{row of a training query: its `negatives` hardest negatives, in first-stage order}, for
    the queries that have that many; `emb` the split's single-vector first-stage embeddings."""
    index = {g: i for i, g in enumerate(emb.gallery_ids)}
    candidates = first_stage(data, emb, excluded_indices(excluded_items(data.queries, "remove"), index), k)
    chosen = {}
    for qi, query in enumerate(data.queries):
        if query.target is None:
            continue
        wrong = positives_of(query)
        pool = [emb.gallery_ids[j] for j in candidates.index[qi].tolist() if emb.gallery_ids[j] not in wrong]
        if len(pool) >= negatives:
            chosen[qi] = pool[:negatives]
    if len(chosen) < 2:
        raise HarnessError(f"re-ranker training: only {len(chosen)} queries of {data.suite}/{data.split} have "
                           f"{negatives} hard negatives in their top {k}; lower --rerank-negatives or raise --rerank-k")
    return chosen


class RerankTrainer(Trainer):
    """The first stage's loop with the re-ranker's step (see the module docstring)."""

    def __init__(self, reranker, data: SplitData, negatives_of: dict[int, list[str]], settings: TrainSettings,
                 device, precision: str, checkpoint_dir: Path | None, eval_batch_size: int):
        self.backbone, self.settings, self.device, self.checkpoint_dir = reranker, settings, device, checkpoint_dir
        self.precision, self.negatives_of = precision, negatives_of
        self.plan = plan = BatchPlan.of(data, settings)
        self.trainable = reranker.trainable_parameters()
        train_only(reranker.model, self.trainable)
        self.start_engine(reranker.model, precision)
        images = [i for q in plan.queries
                  for i in (q.reference, image_of(data, q.target), *(image_of(data, n) for n in negatives_of[id(q)]))]
        self.tokens = VisionTokens(reranker, data, list(dict.fromkeys(images)), device, precision, eval_batch_size,
                                   dtype=self.engine.param_dtype)
        self.data, self.targets_cached = data, False
        self.open_state()

    def chance_loss(self, batch_size: int) -> tuple[float, str]:
        candidates = 1 + len(next(iter(self.negatives_of.values())))
        return math.log(candidates), f"ln({candidates} candidates)"

    def chunk_loss(self, rows: list) -> torch.Tensor:
        """The mean loss of `rows`: each query's positive (column 0) against its negatives."""
        candidates = [[image_of(self.data, q.target), *(image_of(self.data, n) for n in self.negatives_of[id(q)])]
                      for q in rows]
        per_query = len(candidates[0])
        references = self.tokens.get([q.reference for q in rows for _ in range(per_query)])
        items = self.tokens.get([i for c in candidates for i in c])
        captions = [q.caption for q in rows for _ in range(per_query)]
        with forward_context(self.precision, self.device, self.engine.param_dtype):
            scores = self.backbone.scores(references, captions, items).float().view(len(rows), per_query)
        loss = F.cross_entropy(scores, torch.zeros(len(rows), dtype=torch.long, device=scores.device))
        if not torch.isfinite(loss):
            raise HarnessError(f"re-ranker loss became {loss.item()}: lower --rerank-lr or use --precision fp32")
        return loss

    def step(self, batch, epoch: int, b: int) -> float:
        plan = self.plan
        self.set_lr()
        total = 0.0
        with self.meter.recording():
            for start, end in plan.bounds:
                loss = self.chunk_loss(batch[start:end])
                self.backward(loss * ((end - start) / plan.local))
                total += loss.item() * (end - start)
        self.engine.step()
        return total / plan.local


def rerank_train_settings(settings, run: TrainSettings, queries: int) -> TrainSettings:
    """The run's training settings with the re-ranker's epochs, batch, lr and loss; warm-up
    over the first tenth of its steps (the first stage's warm-up is sized for its own run)."""
    batch = min(settings.batch_size, queries)
    steps = (queries // max(batch, 1)) * settings.epochs
    return dataclasses.replace(run, epochs=settings.epochs, batch_size=batch, lr=settings.lr,
                               warmup_steps=max(1, steps // 10), loss=LOSS, seed=settings.seed,
                               max_train_queries=None, iterate="rows")


def train_reranker(reranker, settings, run: TrainSettings, data: SplitData, emb, device, precision: str,
                   checkpoint_dir: Path | None, eval_batch_size: int) -> dict:
    """Hard negatives from `emb` (the training split's first-stage embeddings, pooled; rank 0
    finds them, None on the other torchrun ranks), then the loop; the results' re-ranker
    "training" block."""
    chosen = distributed.broadcast_from_rank0(
        hard_negatives(data, emb, settings.k, settings.negatives) if emb is not None else None)
    train_data = dataclasses.replace(data, queries=[data.queries[qi] for qi in chosen])
    negatives_of = {id(data.queries[qi]): items for qi, items in chosen.items()}
    say(f"training the re-ranker {reranker.name} on {data.suite}/{data.split}: {len(train_data.queries)} queries, "
        f"{settings.negatives} hard negatives each from the first stage's top {settings.k}")
    train_settings = rerank_train_settings(settings, run, len(train_data.queries))
    trainer = RerankTrainer(reranker, train_data, negatives_of, train_settings, device, precision, checkpoint_dir,
                            eval_batch_size)
    result = trainer.run().to_dict()
    result["negatives"] = {"per_query": settings.negatives, "from_top": settings.k,
                           "queries_with_enough": len(train_data.queries), "queries": len(data.queries),
                           "rule": f"the {settings.negatives} first of the top {settings.k} in first-stage order "
                                   "after removing the target, other ground truths and positive soft labels"}
    result["vision_images_encoded"] = trainer.tokens.encoded
    return result
