"""A run's similarity study: every method of `--similarity` tuned on one seeded half of
the evaluated split's queries (its hyperparameters chosen by the suite's headline
metric there), reported on the other half through the suite's own protocol, each
with its bootstrap interval and the paired interval against cosine on the same
queries; with `--mix`, the same methods on the mixed query as well. The halves are
the mixing step's (harness/mixing/parts.py `heldout_halves`, the same seed)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

import torch

from harness.core.errors import HarnessError
from harness.evaluation.embed import COMPOSED
from harness.evaluation.intervals import DESCRIPTION, bootstrap, paired
from harness.evaluation.metrics import percent
from harness.evaluation.query_subset import query_subset
from harness.mixing.parts import heldout_halves, ids_sha256
from harness.similarity.base import SIMILARITIES, Problem, Scoring, check_single_vector

COSINE = "cosine"
DISAGREEMENT_ROWS = 5  # queries shown where the methods' headline values differ most


def half_values(protocol, rules, data, scoring: Scoring, rows: Sequence[int]) -> dict[str, torch.Tensor]:
    """Each query's value of every metric, (len(rows),), scored through the protocol."""
    values = protocol.query_values(*query_subset(data, scoring.emb, rows), rules)[COMPOSED]
    if scoring.fallback is None:
        return values
    use = scoring.fallback_rows[torch.tensor(list(rows), dtype=torch.long)]
    if len(next(iter(values.values()))) != len(rows):
        raise HarnessError("a per-query choice of scoring needs one value per query; this split merges "
                           "queries sharing a pair id (fashioniq-both-orders)")
    other = protocol.query_values(*query_subset(data, scoring.fallback, rows), rules)[COMPOSED]
    return {name: torch.where(use, other[name], v) for name, v in values.items()}


def metric_means(values: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: percent(v).item() for name, v in values.items()}


def tuned(method, problem: Problem, protocol, rules, key: str) -> tuple[dict, Scoring, list[dict]]:
    """(the best setting on the tuning half by `key`, its scoring, every setting tried with its value)."""
    tried, best = [], None
    for setting in method.settings(problem):
        scoring = method.scoring(problem, setting)
        value = metric_means(half_values(protocol, rules, problem.data, scoring, problem.tune_rows))[key]
        tried.append({"setting": setting, key: value})
        if best is None or value > best[0]:
            best = (value, setting, scoring)
    if best is None:
        raise HarnessError(f"--similarity {method.name}: no setting applies to this split")
    return best[1], best[2], tried


class Study:
    """The block being built: one row per method, paired with cosine on the evaluation half."""

    def __init__(self, protocol, rules, problem: Problem, eval_rows: list[int]):
        self.protocol, self.rules, self.problem, self.eval_rows = protocol, rules, problem, eval_rows
        self.key = protocol.headline_metric  # what hyperparameters are tuned for
        self.cosine: dict[str, torch.Tensor] | None = None
        self.per_query: dict[str, list[float]] = {}
        self.scorings: dict[str, tuple[Problem, Scoring]] = {}
        self.rows: list[dict] = []

    def add(self, name: str, problem: Problem, label: str) -> None:
        method = SIMILARITIES.get(name)
        started = time.perf_counter()
        setting, scoring, tried = tuned(method, problem, self.protocol, self.rules, self.key)
        scored = time.perf_counter()
        values = half_values(self.protocol, self.rules, problem.data, scoring, self.eval_rows)
        seconds = time.perf_counter() - scored
        if self.cosine is None:
            self.cosine = values
        self.per_query[label] = values[self.key].tolist()
        self.scorings[label] = (problem, scoring)
        self.rows.append({
            "method": label, "similarity": name, "summary": method.summary, "setting": setting,
            "tuning": tried, **({"details": scoring.details} if scoring.details else {}),
            "metrics": metric_means(values), "interval": bootstrap(values),
            "minus_cosine": paired(values, self.cosine),
            "seconds": {"tuning": scored - started, "evaluation": seconds},
        })


def make_problem(data, emb, exclude, bank, seed: int, loss) -> tuple[Problem, list[int]]:
    tune_rows, eval_rows = heldout_halves(data, seed)
    if not tune_rows or not eval_rows:
        raise HarnessError(f"--similarity needs at least two queries to tune on one half and report on the "
                           f"other; {data.suite}/{data.split} has {len(data.queries)}")
    check_single_vector(emb)
    return Problem(data, emb, exclude, bank, tuple(tune_rows), seed, loss), eval_rows


def run_study(methods: Sequence[str], protocol, rules, problem: Problem, eval_rows: list[int],
              bank_record: dict, mixed: tuple[list[float], torch.Tensor] | None = None) -> dict:
    """The results' `similarity` block. `mixed`: (weights, the mixed queries (Q, D)) when
    the run mixes, each method then also scored on them."""
    started = time.perf_counter()
    study = Study(protocol, rules, problem, eval_rows)
    ordered = [COSINE, *[m for m in methods if m != COSINE]]  # cosine first: every row is paired with it
    for name in ordered:
        study.add(name, problem, name)
    if mixed is not None:
        mixed_problem = replace(problem, emb=replace(problem.emb, composed=mixed[1]))
        for name in ordered:
            study.add(name, mixed_problem, f"mixed + {name}")
    return {
        "methods": ordered,
        "headline": study.key,
        "metrics": list(study.rows[0]["metrics"]),
        "bank": bank_record,
        "tuning": _half(problem, list(problem.tune_rows), f"heldout-half seed {problem.seed}, the first half"),
        "evaluation": _half(problem, eval_rows, f"heldout-half seed {problem.seed}, the second half"),
        **({"mixed_weights": [round(float(w), 6) for w in mixed[0]]} if mixed is not None else {}),
        "rows": study.rows,
        "disagreement": disagreement(study, eval_rows),
        "intervals": f"on the evaluation half: {DESCRIPTION}; minus_cosine is paired, on the same queries",
        "seconds": time.perf_counter() - started,
    }


def _half(problem: Problem, rows: list[int], rule: str) -> dict:
    pair_ids = [problem.data.queries[i].pair_id for i in rows]
    return {"rule": rule, "queries": len(rows), "pair_ids_sha256": ids_sha256(pair_ids)}


def disagreement(study: Study, eval_rows: list[int]) -> list[dict]:
    """The evaluation queries whose headline value differs most between methods (max - min,
    ties by order), each with every method's value, its target's rank and its top 5."""
    per_query = study.per_query
    if len(per_query) < 2 or any(len(v) != len(eval_rows) for v in per_query.values()):
        return []
    table = torch.tensor(list(per_query.values()), dtype=torch.float64)  # (methods, queries)
    spread = table.max(0).values - table.min(0).values
    chosen = [j for j in sorted(range(len(eval_rows)), key=lambda j: (-spread[j].item(), j))[:DISAGREEMENT_ROWS]
              if spread[j] > 0]
    rows = [eval_rows[j] for j in chosen]
    if not rows:
        return []
    out = [{"pair_id": study.problem.data.queries[r].pair_id, "caption": study.problem.data.queries[r].caption,
            "reference": study.problem.data.queries[r].reference, "target": study.problem.data.queries[r].target,
            "metric": study.key, "methods": {}} for r in rows]
    for label, (problem, scoring) in study.scorings.items():
        records = study.protocol.query_records(*query_subset(problem.data, scoring.emb, rows), study.rules)
        if scoring.fallback is not None:
            other = study.protocol.query_records(*query_subset(problem.data, scoring.fallback, rows), study.rules)
            records = [o if bool(scoring.fallback_rows[r]) else m for r, m, o in zip(rows, records, other)]
        for n, (j, record) in enumerate(zip(chosen, records)):
            composed = record["methods"][COMPOSED]
            out[n]["methods"][label] = {"value": per_query[label][j], "target_rank": composed.get("target_rank"),
                                        "top": composed["top"][:5]}
    return out
