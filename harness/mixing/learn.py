"""--mix learn: w = softmax(theta) fitted by the run's contrastive loss on the tuning
set's cached embeddings (query m against its target, in-batch negatives)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from harness.core.errors import HarnessError
from harness.mixing.parts import Part

# Adam on theta (3 numbers) from uniform weights, full batches of at most LEARN_BATCH
# tuning pairs (a fresh seeded sample each step when there are more).
LEARN_STEPS = 200
LEARN_LR = 0.05
LEARN_BATCH = 1024


def learn_weights(part: Part, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                  seed: int, steps: int = LEARN_STEPS, lr: float = LEARN_LR,
                  batch: int = LEARN_BATCH) -> dict:
    """theta (3,) with w = softmax(theta) minimising loss_fn(normalize(w·parts), target)
    over the part's queries that have a target in the gallery."""
    has_target = (part.labels.hard[:, :1] > 0).squeeze(1) if part.labels.hard.shape[1] else None
    if has_target is None or not bool(has_target.any()):
        raise HarnessError(f"--mix learn: no tuning query of {part.split} has its target in the gallery")
    rows = torch.nonzero(has_target).squeeze(1)
    stacked = torch.stack([p[rows] for p in part.parts])  # (3, N, D)
    targets = part.gallery[part.labels.positives[rows, 0]]
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
