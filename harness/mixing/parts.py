"""The query sets mixing works on: a tuning and an evaluation set of one split (a
seeded held-out half each), or a tuning split of its own, subsampled."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from harness.core.errors import HarnessError
from harness.evaluation.metrics import QueryLabels, build_labels
from harness.mixing.grid import normalized
from harness.suites.base import SplitData

PARTS = ("image", "text", "composed")  # SplitEmbeddings attributes of q, t, f


@dataclass
class Part:
    """The queries of one tuning or evaluation set: their labels and normalised
    (q, t, f), against the split's normalised gallery."""

    name: str
    split: str
    pair_ids: list[int]
    labels: QueryLabels
    parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    gallery: torch.Tensor

    def describe(self, rule: str) -> dict:
        return {"split": self.split, "rule": rule, "queries": len(self.pair_ids),
                "gallery_images": self.gallery.shape[0], "pair_ids_sha256": ids_sha256(self.pair_ids)}


def make_part(name: str, data: SplitData, emb, rows: Sequence[int] | None = None) -> Part:
    for attr in (*PARTS, "gallery"):
        if getattr(emb, attr).ndim != 2:
            raise HarnessError(f"--mix needs single-vector embeddings; {attr} is {tuple(getattr(emb, attr).shape)}")
    rows = list(range(len(data.queries))) if rows is None else list(rows)
    queries = [data.queries[i] for i in rows]
    index = torch.tensor(rows, dtype=torch.long)
    labels = build_labels(queries, {g: i for i, g in enumerate(emb.gallery_ids)})
    parts = tuple(normalized(getattr(emb, attr)[index]) for attr in PARTS)
    return Part(name, data.split, [q.pair_id for q in queries], labels, parts, normalized(emb.gallery))


def ids_sha256(pair_ids: Sequence[int]) -> str:
    return hashlib.sha256(json.dumps(list(pair_ids)).encode()).hexdigest()


def _order_key(seed: int, pair_id) -> str:
    return hashlib.sha256(f"{seed}:{pair_id}".encode()).hexdigest()


def heldout_halves(data: SplitData, seed: int) -> tuple[list[int], list[int]]:
    """Rows of the tuning and the evaluation half: queries ordered by
    sha256("<seed>:<pair id>"), the first floor(n/2) tune, the rest evaluate; each
    half keeps the split's order."""
    order = sorted(range(len(data.queries)), key=lambda i: _order_key(seed, data.queries[i].pair_id))
    tune = sorted(order[: len(order) // 2])
    return tune, sorted(order[len(order) // 2 :])


def subsample(data: SplitData, cap: int | None, seed: int) -> tuple[SplitData, str]:
    """The split's queries that have a target, at most `cap` of them (the first `cap` by
    the seeded hash order), under a split name that says so (its own cache entry)."""
    rows = [i for i, q in enumerate(data.queries) if q.target is not None]
    rule = f"queries with a target ({len(rows)} of {len(data.queries)})"
    if cap is not None and len(rows) > cap:
        rows = sorted(sorted(rows, key=lambda i: _order_key(seed, data.queries[i].pair_id))[:cap])
        rule += f", the first {cap} by sha256('{seed}:<pair id>')"
        return replace(data, queries=[data.queries[i] for i in rows],
                       split=f"{data.split}-sample{cap}-seed{seed}"), rule
    return replace(data, queries=[data.queries[i] for i in rows]), rule
