"""--mix learn: w = softmax(theta) fitted by the run's contrastive loss on the tuning
set's cached embeddings (query m against its target, in-batch negatives). The target
is each query's annotated one on every suite (CIRCO's target_img_id, the first of its
ground truths; FashionIQ's target, from the whole gallery), as the gallery scores it."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from harness.core.errors import HarnessError
from harness.evaluation.reference_rule import excluded_items
from harness.mixing.parts import Part

# Adam on theta (3 numbers) from uniform weights, full batches of at most LEARN_BATCH
# tuning pairs (a fresh seeded sample each step when there are more).
LEARN_STEPS = 200
LEARN_LR = 0.05
LEARN_BATCH = 1024


def target_pairs(queries, index: dict[str, int], removed) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, gallery index of each row's target) of the queries whose target is in the
    gallery (`index`) and is not the item their ranking leaves out (`removed`, per query)."""
    pairs = [(row, index[q.target]) for row, (q, item) in enumerate(zip(queries, removed, strict=True))
             if q.target is not None and q.target != item and q.target in index]
    rows, targets = zip(*pairs) if pairs else ((), ())
    return torch.tensor(rows, dtype=torch.long), torch.tensor(targets, dtype=torch.long)


def target_rows(part: Part, reference: str = "remove") -> tuple[torch.Tensor, torch.Tensor]:
    """`target_pairs` of the part's queries, the removed item by `reference`."""
    queries = part.data.queries
    return target_pairs(queries, {g: i for i, g in enumerate(part.gallery_ids)}, excluded_items(queries, reference))


def adam_fit(parameter: torch.Tensor, loss_of: Callable[[torch.Tensor], torch.Tensor], count: int, seed: int,
             steps: int, lr: float, batch: int) -> tuple[list[float], float]:
    """Adam on `parameter` for `steps` steps, each on the loss of `loss_of(rows)` for a
    fresh seeded sample of at most `batch` of `count` rows (all of them when fewer):
    (the loss per step, seconds)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam([parameter], lr=lr)
    curve, started = [], time.perf_counter()
    for _ in range(steps):
        take = torch.randperm(count, generator=generator)[:batch] if count > batch else torch.arange(count)
        loss = loss_of(take)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        curve.append(loss.item())
    return curve, time.perf_counter() - started


def learn_weights(part: Part, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                  seed: int, steps: int = LEARN_STEPS, lr: float = LEARN_LR,
                  batch: int = LEARN_BATCH, reference: str = "remove") -> dict:
    """theta (3,) with w = softmax(theta) minimising loss_fn(normalize(w·parts), target)
    over the part's queries that have a target in the gallery."""
    rows, target_index = target_rows(part, reference)
    if len(rows) == 0:
        raise HarnessError(f"--mix learn: no tuning query of {part.split} has its target in the gallery")
    stacked = torch.stack([p[rows] for p in part.parts])  # (3, N, D)
    targets = part.gallery[target_index].float()
    theta = torch.zeros(3, requires_grad=True)

    def loss_of(take: torch.Tensor) -> torch.Tensor:
        query = F.normalize(torch.einsum("k,knd->nd", torch.softmax(theta, dim=0), stacked[:, take]), dim=-1)
        return loss_fn(query, targets[take])

    curve, seconds = adam_fit(theta, loss_of, len(rows), seed, steps, lr, batch)
    weights = torch.softmax(theta.detach(), dim=0)
    return {
        "weights": weights.tolist(),
        "theta": theta.detach().tolist(),
        "steps": steps, "lr": lr, "batch": min(batch, len(rows)), "pairs": len(rows),
        "optimizer": "Adam, theta from 0 (uniform weights)",
        "loss_first": curve[0], "loss_last": curve[-1],
        "loss_curve": curve[:: max(1, steps // 20)],
        "seconds": seconds,
    }
