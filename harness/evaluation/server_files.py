"""The two CIRR test-server submission files, shaped like the official examples:
{"version": "rc2", "metric": "recall", "<pairid>": [50 ids]} and
{"version": "rc2", "metric": "recall_subset", "<pairid>": [3 ids]}."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from harness.core.atomic import write_json

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


# CIRCO: {"<query id>": [50 image ids]} for every test query; the server rejects a
# list with a duplicate, and ids are COCO's integers.
CIRCO_TOP = 50


def circo_problems(submission: dict, query_ids: Sequence[int], top: int = CIRCO_TOP) -> list[str]:
    """What the CIRCO server would reject in `submission`: missing or unknown query
    ids, lists that are not `top` long, duplicates within a list."""
    problems = []
    expected = {str(q) for q in query_ids}
    missing = sorted(expected - set(submission), key=int)
    unknown = sorted(set(submission) - expected)
    if missing:
        problems.append(f"{len(missing)} queries missing (first {missing[0]})")
    if unknown:
        problems.append(f"{len(unknown)} unknown query ids (first {unknown[0]})")
    for query_id, ids in submission.items():
        if len(ids) != top:
            problems.append(f"query {query_id}: {len(ids)} ids, not {top}")
        elif len(set(ids)) != len(ids):
            problems.append(f"query {query_id}: an image id appears twice")
    return problems


def write_circo_submission(path: Path, query_ids: Sequence[int], ranked_ids: Sequence[Sequence[str]]) -> str:
    """Checks the file (circo_problems) before writing it; an image id that is a number
    is written as one, as COCO ids are."""
    submission = {
        str(q): [int(i) if i.isdigit() else i for i in ids] for q, ids in zip(query_ids, ranked_ids, strict=True)
    }
    problems = circo_problems(submission, query_ids)
    if problems:
        raise ValueError("CIRCO submission would be rejected: " + "; ".join(problems[:5]))
    write_json(path, submission)
    return str(path)
