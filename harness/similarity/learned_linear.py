"""`learned-linear`: the query re-made by a linear map, q' = normalize(W q), W (D, D)
fitted on the tuning half's (query, target) pairs by the run's contrastive loss with
in-batch negatives, from W = I, as `--mix learn` fits its three weights
(harness/mixing/learn.py): the seed's "learn it" question asked of the whole vector.
Nothing is tuned: the fit itself reads the tuning half."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from harness.core.errors import HarnessError
from harness.similarity.base import SIMILARITIES, Problem, Scoring, composed_only

STEPS = 200
LR = 1e-3
BATCH = 1024


def tuning_pairs(problem: Problem) -> tuple[torch.Tensor, torch.Tensor]:
    """(queries, targets) of the tuning rows whose target is a gallery item other than the removed one."""
    index = {g: i for i, g in enumerate(problem.emb.gallery_ids)}
    rows, targets = [], []
    for r in problem.tune_rows:
        target = index.get(problem.data.queries[r].target)
        if target is not None and target != int(problem.exclude[r]):
            rows.append(r)
            targets.append(target)
    if len(rows) < 2:
        raise HarnessError("--similarity learned-linear: fewer than two tuning queries have their target "
                           "in the gallery")
    return problem.emb.composed[rows].float(), problem.emb.gallery[targets].float()


def fit_linear(queries: torch.Tensor, targets: torch.Tensor, loss_fn, seed: int) -> tuple[torch.Tensor, dict]:
    """W (D, D) from the identity, Adam, STEPS full batches of at most BATCH pairs (seeded samples)."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.eye(queries.shape[1], requires_grad=True)
    optimizer = torch.optim.Adam([weight], lr=LR)
    curve, started = [], time.perf_counter()
    for _ in range(STEPS):
        take = (torch.randperm(len(queries), generator=generator)[:BATCH] if len(queries) > BATCH
                else torch.arange(len(queries)))
        loss = loss_fn(F.normalize(queries[take] @ weight.T, dim=-1), targets[take])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        curve.append(loss.item())
    fit = {"pairs": len(queries), "steps": STEPS, "lr": LR, "batch": min(BATCH, len(queries)),
           "loss_first": curve[0], "loss_last": curve[-1], "seconds": time.perf_counter() - started}
    return weight.detach(), fit


class LearnedLinear:
    name = "learned-linear"
    needs_bank = False
    summary = "a linear map of the query fitted on the tuning half by the run's contrastive loss, from the identity"

    def settings(self, problem: Problem) -> list[dict]:
        return [{}]

    def scoring(self, problem: Problem, setting: dict) -> Scoring:
        if problem.loss is None:
            raise HarnessError("--similarity learned-linear needs the run's contrastive loss")
        weight, fit = fit_linear(*tuning_pairs(problem), problem.loss, problem.seed)
        query = F.normalize(problem.emb.composed.float() @ weight.T, dim=-1)
        return Scoring(composed_only(problem.emb, composed=query), details={"fit": fit})


SIMILARITIES.register("learned-linear")(LearnedLinear())
