"""How much a figure moves with the queries it was measured on: seeded bootstrap
intervals over queries, and paired intervals for the difference of two methods
scored on the same queries.

A metric is a mean over queries of a per-query value (1 or 0 for a hit within K,
the best label for soft targets, (R@5 + Rsubset@1) / 2 for Avg, AP@K for CIRCO; a
FashionIQ query's share of a per-category mean). A resample draws Q
queries with replacement and takes the mean; the interval is the 2.5th and 97.5th
percentile over RESAMPLES resamples (the percentile bootstrap). A paired interval
resamples the same queries for both methods and takes the difference of the means,
so what the two methods share (hard queries, easy queries) cancels: it is the
interval to read before calling one method better. Everything is seeded, so the
same values give the same intervals on any machine.
"""

from __future__ import annotations

import statistics

import torch

RESAMPLES = 1000
LEVEL = 0.95
SEED = 0
DESCRIPTION = f"percentile bootstrap over queries, {RESAMPLES} resamples, seed {SEED}, level {LEVEL}"


def resample_indices(num_queries: int, resamples: int = RESAMPLES, seed: int = SEED) -> torch.Tensor:
    """(resamples, Q) query indices drawn with replacement (CPU generator: the same on any machine)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_queries, (resamples, num_queries), generator=generator)


def _percentiles(samples: torch.Tensor, level: float) -> list[float]:
    tail = (1.0 - level) / 2
    low, high = torch.quantile(samples, torch.tensor([tail, 1.0 - tail], dtype=samples.dtype))
    return [low.item(), high.item()]


def bootstrap(values: dict[str, torch.Tensor], resamples: int = RESAMPLES, seed: int = SEED,
              level: float = LEVEL) -> dict[str, list[float]]:
    """{metric: [low, high]} in percent, from per-query values (Q,) whose mean is the
    metric / 100."""
    if not values:
        return {}
    num_queries = len(next(iter(values.values())))
    if num_queries == 0:
        return {name: [float("nan"), float("nan")] for name in values}
    index = resample_indices(num_queries, resamples, seed)
    return {name: _percentiles(100.0 * v.double()[index].mean(dim=1), level) for name, v in values.items()}


def paired(values_a: dict[str, torch.Tensor], values_b: dict[str, torch.Tensor], resamples: int = RESAMPLES,
           seed: int = SEED, level: float = LEVEL) -> dict[str, dict]:
    """{metric: {"difference": mean(a) - mean(b), "interval": [low, high]}} in points,
    the same resampled queries for both (values aligned by query)."""
    out = {}
    num_queries = len(next(iter(values_a.values()))) if values_a else 0
    index = resample_indices(num_queries, resamples, seed) if num_queries else None
    for name, a in values_a.items():
        delta = 100.0 * (a.double() - values_b[name].double())
        if index is None:
            out[name] = {"difference": float("nan"), "interval": [float("nan"), float("nan")]}
            continue
        out[name] = {"difference": delta.mean().item(), "interval": _percentiles(delta[index].mean(dim=1), level)}
    return out


def method_intervals(values: dict[str, dict[str, torch.Tensor]], reference: str) -> dict:
    """The results' "intervals" block: a bootstrap interval for every metric of every
    method, and the paired interval of `reference` minus each other method (the
    composed query against each baseline), from {method: {metric: (Q,) values}}."""
    return {
        "method": DESCRIPTION,
        "bootstrap": {method: bootstrap(v) for method, v in values.items()},
        "paired": {f"{reference} minus {method}": paired(values[reference], v)
                   for method, v in values.items() if method != reference},
    }


def over_seeds(per_seed: list[dict]) -> dict:
    """One paired difference over training seeds, from each seed's `paired` entry
    ({"difference", "interval"}): its mean and sample sd over seeds, the seeds whose
    interval excludes 0 on the mean's side, and whether it holds beyond noise (every
    seed agrees and the mean exceeds twice the sd)."""
    values = [entry["difference"] for entry in per_seed]
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    side = 1 if mean >= 0 else -1
    agreeing = sum(1 for entry in per_seed if side * entry["interval"][0 if side > 0 else 1] > 0)
    return {"mean": mean, "sd": sd, "values": values, "seeds_beyond_query_noise": agreeing,
            "holds": agreeing == len(per_seed) and abs(mean) > 2 * sd}
