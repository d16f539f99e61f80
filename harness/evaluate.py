"""Scoring a split's embeddings: CIRR metrics for the composed query and both
baselines where targets exist, the two server files where they don't (test1).
The embeddings are checked first (harness/validate.py): nothing is scored from
NaN, mismatched or empty tensors."""

from __future__ import annotations

from pathlib import Path

import torch

import kernels
from harness.embed import SplitEmbeddings
from harness.metrics import build_labels, cirr_metrics, subset_scores_of
from harness.server_files import RECALL_TOP, SUBSET_TOP, write_cirr_submissions
from harness.suites.base import SplitData
from harness.validate import check_embeddings

# Rows of every results table: the composed query and the two single-modality baselines.
METHODS = {
    "composed f(q,t)": "composed",
    "image-only q": "image",
    "text-only t": "text",
}


def evaluate_methods(
    data: SplitData, emb: SplitEmbeddings, convention: str, tie_rule: str
) -> dict[str, dict[str, float]]:
    check_embeddings(data, emb, METHODS)
    labels = build_labels(data.queries, {g: i for i, g in enumerate(emb.gallery_ids)})
    return {
        method: cirr_metrics(getattr(emb, attr), emb.gallery, labels, convention, tie_rule)
        for method, attr in METHODS.items()
    }


def write_server_files(data: SplitData, emb: SplitEmbeddings, directory: Path, stem: str) -> dict[str, str]:
    """Top-50 over the gallery and top-3 within the image set, reference removed;
    ties broken by gallery (or member) order."""
    check_embeddings(data, emb, {"composed f(q,t)": "composed"})
    labels = build_labels(data.queries, {g: i for i, g in enumerate(emb.gallery_ids)})
    _, top = kernels.topk_excluding(emb.composed, emb.gallery, RECALL_TOP, labels.reference)
    top_recall = [[emb.gallery_ids[i] for i in row] for row in top.tolist()]

    scores, valid = subset_scores_of(emb.composed, emb.gallery, labels)
    order = torch.sort(scores.masked_fill(~valid, float("-inf")), dim=1, descending=True, stable=True).indices
    top_subset = []
    for q, row in zip(data.queries, order.tolist()):
        candidates = [q.members[m] for m in row if m < len(q.members) and q.members[m] != q.reference]
        top_subset.append(candidates[:SUBSET_TOP])
    version = data.provenance.get("version", "rc2")
    return write_cirr_submissions(
        directory, stem, [q.pair_id for q in data.queries], top_recall, top_subset, version
    )
