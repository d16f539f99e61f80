"""Scoring protocols: how a suite's split is scored, described in the results,
tabulated, and submitted to a test server. A suite names its protocol
(`suite.scoring`); the pipeline and the report look it up here.

    protocol = PROTOCOLS.get(suite.scoring)
    metrics = protocol.evaluate(data, embeddings, rules)           # {method: {metric: value}}
    values = protocol.query_values(data, embeddings, rules)        # {method: {metric: (Q,) per query}}
    records = protocol.query_records(data, embeddings, rules)      # <run>.queries.jsonl
    fields = protocol.describe(data, rules)                         # the results' "protocol" block
    files = protocol.write_server_files(data, embeddings, rules, out, stem)  # no targets
    text = protocol.metrics_table(result)                           # per-run and BENCHMARKS.md

`rules` (ScoringRules) are the run's choices that change a figure, checked and
made concrete for the protocol by `resolved(rules, protocol)` before scoring; the
embeddings a protocol receives are already pooled by `rules.token_pooling`
(harness/outputs.py). The CIRR protocol
keeps the results it always wrote: no "scoring" field in the protocol block (its
absence means "cirr").
"""

from harness.evaluation.protocols import circo, cirr, egocvr, fashioniq, genecis, webvid  # noqa: F401  (registration)
from harness.evaluation.protocols.base import (
    PROTOCOLS,
    ScoringProtocol,
    ScoringRules,
    resolved,
    scoring_of,
)

__all__ = ["PROTOCOLS", "ScoringProtocol", "ScoringRules", "resolved", "scoring_of"]
