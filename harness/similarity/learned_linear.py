"""`learned-linear`: the query re-made by a linear map, q' = normalize(W q), W (D, D)
fitted on the tuning half's (query, target) pairs by the run's contrastive loss with
in-batch negatives, from W = I, by the loop `--mix learn` fits its three weights with
(harness/mixing/learn.py `adam_fit`): the seed's "learn it" question asked of the whole
vector. Nothing is tuned: the fit itself reads the tuning half."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.core.errors import HarnessError
from harness.mixing.learn import adam_fit, target_pairs
from harness.similarity.base import SIMILARITIES, Problem, Scoring, composed_only

STEPS = 200
LR = 1e-3
BATCH = 1024


def tuning_pairs(problem: Problem) -> tuple[torch.Tensor, torch.Tensor]:
    """(queries, targets) of the tuning rows whose target is a gallery item other than the removed one."""
    ids = problem.emb.gallery_ids
    tune = list(problem.tune_rows)
    removed = [ids[e] if e >= 0 else None for e in problem.exclude[tune].tolist()]
    rows, targets = target_pairs([problem.data.queries[r] for r in tune], {g: i for i, g in enumerate(ids)}, removed)
    if len(rows) < 2:
        raise HarnessError("--similarity learned-linear: fewer than two tuning queries have their target "
                           "in the gallery")
    return problem.emb.composed[torch.tensor(tune)[rows]].float(), problem.emb.gallery[targets].float()


def fit_linear(queries: torch.Tensor, targets: torch.Tensor, loss_fn, seed: int) -> tuple[torch.Tensor, dict]:
    """W (D, D) from the identity, Adam, STEPS batches of at most BATCH pairs (seeded samples)."""
    weight = torch.eye(queries.shape[1], requires_grad=True)

    def loss_of(take: torch.Tensor) -> torch.Tensor:
        return loss_fn(F.normalize(queries[take] @ weight.T, dim=-1), targets[take])

    curve, seconds = adam_fit(weight, loss_of, len(queries), seed, STEPS, LR, BATCH)
    fit = {"pairs": len(queries), "steps": STEPS, "lr": LR, "batch": min(BATCH, len(queries)),
           "loss_first": curve[0], "loss_last": curve[-1], "seconds": seconds}
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
