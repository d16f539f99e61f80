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


def target_rows(part: Part, reference: str = "remove") -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, gallery index of each row's target) of the part's queries whose target
    is in the gallery and is not the item their ranking leaves out (`reference`)."""
    index = {g: i for i, g in enumerate(part.gallery_ids)}
    queries = part.data.queries
    pairs = [(row, index[q.target]) for row, (q, removed) in enumerate(zip(queries, excluded_items(queries, reference)))
             if q.target is not None and q.target != removed and q.target in index]
    rows, targets = zip(*pairs) if pairs else ((), ())
    return torch.tensor(rows, dtype=torch.long), torch.tensor(targets, dtype=torch.long)


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
    generator = torch.Generator().manual_seed(seed)
    theta = torch.zeros(3, requires_grad=True)
    optimizer = torch.optim.Adam([theta], lr=lr)
    curve = []
    started = time.perf_counter()
    for _ in range(steps):
        take = (torch.randperm(len(rows), generator=generator)[:batch] if len(rows) > batch
                else torch.arange(len(rows)))
        weights = torch.softmax(theta, dim=0)
        query = F.normalize(torch.einsum("k,knd->nd", weights, stacked[:, take]), dim=-1)
        loss = loss_fn(query, targets[take])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        curve.append(loss.item())
    weights = torch.softmax(theta.detach(), dim=0)
    return {
        "weights": weights.tolist(),
        "theta": theta.detach().tolist(),
        "steps": steps, "lr": lr, "batch": min(batch, len(rows)), "pairs": len(rows),
        "optimizer": "Adam, theta from 0 (uniform weights)",
        "loss_first": curve[0], "loss_last": curve[-1],
        "loss_curve": curve[:: max(1, steps // 20)],
        "seconds": time.perf_counter() - started,
    }
