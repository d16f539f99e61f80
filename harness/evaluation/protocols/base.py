"""The ScoringProtocol contract, its registry and the rules a run hands to it
(harness/evaluation/protocols/__init__.py shows how the pipeline uses them)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import torch

from harness.core.registry import Registry
from harness.evaluation import reference_rule, token_pooling


@dataclass(frozen=True)
class ScoringRules:
    """What a protocol needs of the run: the CIRR scoring convention and the tie rule
    (harness/evaluation/metrics.py), where the reference stands
    (harness/evaluation/reference_rule.py) and how multi-vector features meet
    (harness/evaluation/token_pooling.py; "auto" until `resolved`); built by
    RunConfig.scoring_rules()."""

    convention: str = "covr"
    tie_rule: str = "pessimistic"
    reference: str = "remove"
    token_pooling: str = "auto"


def resolved(rules: ScoringRules, protocol) -> ScoringRules:
    """`rules` checked against what `protocol` accepts, "auto" pooling made its rule."""
    reference_rule.check(rules.reference, protocol)
    return replace(rules, token_pooling=token_pooling.resolve(rules.token_pooling, protocol.token_pooling))


class ScoringProtocol(Protocol):
    name: str
    reference_rules: tuple[str, ...]  # the --reference rules it takes, "remove" first
    token_pooling: str  # its multi-vector rule under --token-pooling auto (CoVR-2's for the suite)
    headline_metric: str  # the metric tuned hyperparameters are chosen for (harness/similarity/study.py)

    def describe(self, data, rules: ScoringRules) -> dict: ...

    def evaluate(self, data, emb, rules: ScoringRules) -> dict[str, dict[str, float]]: ...

    # Each query's value for every metric (a metric is 100 x their mean): what the
    # bootstrap intervals resample (harness/evaluation/intervals.py).
    def query_values(self, data, emb, rules: ScoringRules) -> dict[str, dict[str, torch.Tensor]]: ...

    # One record per query for `<run>.queries.jsonl` (harness/evaluation/per_query.py).
    def query_records(self, data, emb, rules: ScoringRules) -> list[dict]: ...

    def write_server_files(self, data, emb, rules: ScoringRules, directory: Path, stem: str) -> dict[str, str]: ...

    def metrics_table(self, result: dict) -> str: ...


PROTOCOLS: Registry[ScoringProtocol] = Registry("scoring protocol")


def scoring_of(result: dict) -> str:
    """The protocol a results file was scored with ("cirr" for files that do not say)."""
    return result["protocol"].get("scoring", "cirr")

