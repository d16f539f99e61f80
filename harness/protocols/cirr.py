"""The CIRR protocol (harness/evaluate.py, harness/metrics.py): Recall@K over the
split's gallery and Recall_subset@K within the image set, the reference removed;
test1 writes the two server files. Suites `cirr` and `shapes` use it."""

from __future__ import annotations

from pathlib import Path

from harness.evaluate import evaluate_methods, write_server_files
from harness.metrics import RECALL_KS, SUBSET_KS
from harness.protocols import PROTOCOLS


class CirrProtocol:
    name = "cirr"

    def describe(self, data, config) -> dict:
        # The fields CIRR results always carried, in their order (no "scoring" field).
        return {
            "reference_removed": True,
            "tie_rule": config.tie_rule,
            "convention": config.convention,
            "recall_ks": list(RECALL_KS),
            "subset_ks": list(SUBSET_KS),
        }

    def evaluate(self, data, emb, config) -> dict[str, dict[str, float]]:
        return evaluate_methods(data, emb, config.convention, config.tie_rule)

    def write_server_files(self, data, emb, directory: Path, stem: str) -> dict[str, str]:
        return write_server_files(data, emb, directory, stem)

    def metrics_table(self, result: dict) -> str:
        from harness.report import metrics_table  # the CIRR table lives there (import cycle)

        return metrics_table(result)


PROTOCOLS.register("cirr")(CirrProtocol())
