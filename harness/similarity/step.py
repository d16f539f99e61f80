"""A run's similarity step: the pooled embeddings, each query's removed item, the query
bank embedded by the run's model, the mixed query when the run mixes, then the study
(harness/similarity/study.py)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from harness.core.progress import say
from harness.evaluation import token_pooling
from harness.evaluation.reference_rule import excluded_indices, excluded_items
from harness.mixing.grid import mix
from harness.similarity.bank import NONE, bank_queries
from harness.similarity.settings import SimilaritySettings, needs_bank
from harness.similarity.study import make_problem, run_study
from harness.suites.base import SplitData


def mixed_choice(mixing: dict | None, protocol) -> list[float] | None:
    """The mixing block's weights chosen for the headline metric on tuning, if it has them."""
    if not mixing:
        return None
    wanted = f"best {protocol.headline_metric} on tuning"
    for row in mixing.get("rows", []):
        if row["method"] == wanted:
            return row["weights"]
    return None


def bank_vectors(settings: SimilaritySettings, suite, rules, embed: Callable[[SplitData], object]
                 ) -> tuple[torch.Tensor | None, dict]:
    if settings.bank == NONE or not needs_bank(settings.methods):
        return None, {"split": None, "rule": "no method of this run reads a bank"}
    data, record = bank_queries(suite.load(settings.bank), settings.bank_max_queries, settings.seed)
    say(f"similarity bank: {record['rule']}")
    emb = token_pooling.pooled(embed(data), rules.token_pooling)
    return emb.composed.float(), record


def similarity_step(settings: SimilaritySettings, suite, protocol, rules, data: SplitData, embeddings,
                    embed: Callable[[SplitData], object], loss, mixing: dict | None = None) -> dict:
    """The results' `similarity_study` block of a run. `embed(split_data)` embeds the bank
    split; `loss` is the run's contrastive loss (learned-linear); `mixing` the run's mixing block."""
    bank, record = bank_vectors(settings, suite, rules, embed)
    return study_of(settings.methods, protocol, rules, data, embeddings, bank, record, settings.seed, loss, mixing)


def study_of(methods, protocol, rules, data: SplitData, embeddings, bank: torch.Tensor | None, bank_record: dict,
             seed: int, loss, mixing: dict | None = None) -> dict:
    """The study of `methods` on `embeddings` (pooled here as the protocol scored them)."""
    emb = token_pooling.pooled(embeddings, rules.token_pooling)
    index = {g: i for i, g in enumerate(emb.gallery_ids)}
    exclude = excluded_indices(excluded_items(data.queries, rules.reference), index)
    problem, eval_rows = make_problem(data, emb, exclude, bank, seed, loss)
    weights = mixed_choice(mixing, protocol)
    mixed = None
    if weights is not None and emb.image is not None and emb.text is not None:
        mixed = (weights, mix((emb.image, emb.text, emb.composed), weights))
    say(f"similarity methods: {', '.join(methods)}")
    return run_study(methods, protocol, rules, problem, eval_rows, bank_record, mixed)
