"""The two CIRR test-server submission files, shaped like the official examples:
{"version": "rc2", "metric": "recall", "<pairid>": [50 ids]} and
{"version": "rc2", "metric": "recall_subset", "<pairid>": [3 ids]}."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from harness.atomic import write_json

RECALL_TOP = 50
SUBSET_TOP = 3


def submission(metric: str, pair_ids: Sequence[int], ranked_ids: Sequence[Sequence[str]], version: str = "rc2") -> dict:
    out: dict = {"version": version, "metric": metric}
    for pair_id, ids in zip(pair_ids, ranked_ids, strict=True):
        out[str(pair_id)] = list(ids)
    return out


def write_cirr_submissions(
    directory: Path,
    stem: str,
    pair_ids: Sequence[int],
    top_recall: Sequence[Sequence[str]],
    top_subset: Sequence[Sequence[str]],
    version: str = "rc2",
) -> dict[str, str]:
    paths = {
        "recall": directory / f"{stem}.recall_submission.json",
        "recall_subset": directory / f"{stem}.recall_subset_submission.json",
    }
    write_json(paths["recall"], submission("recall", pair_ids, top_recall, version))
    write_json(paths["recall_subset"], submission("recall_subset", pair_ids, top_subset, version))
    return {metric: str(path) for metric, path in paths.items()}
