"""Scoring protocols: how a suite's split is scored, described in the results,
tabulated, and submitted to a test server. A suite names its protocol
(`suite.scoring`); the pipeline and the report look it up here.

    protocol = PROTOCOLS.get(suite.scoring)
    metrics = protocol.evaluate(data, embeddings, config)          # {method: {metric: value}}
    fields = protocol.describe(data, config)                        # the results' "protocol" block
    files = protocol.write_server_files(data, embeddings, out, stem)  # a split without targets
    text = protocol.metrics_table(result)                           # per-run and BENCHMARKS.md

The CIRR protocol keeps the results it always wrote: no "scoring" field in the
protocol block (its absence means "cirr") and its table in harness/report.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from harness.registry import Registry


class ScoringProtocol(Protocol):
    name: str

    def describe(self, data, config) -> dict: ...

    def evaluate(self, data, emb, config) -> dict[str, dict[str, float]]: ...

    def write_server_files(self, data, emb, directory: Path, stem: str) -> dict[str, str]: ...

    def metrics_table(self, result: dict) -> str: ...


PROTOCOLS: Registry[ScoringProtocol] = Registry("scoring protocol")


def scoring_of(result: dict) -> str:
    """The protocol a results file was scored with ("cirr" for files that do not say)."""
    return result["protocol"].get("scoring", "cirr")


from harness.protocols import circo, cirr, fashioniq  # noqa: E402,F401  (registration)
