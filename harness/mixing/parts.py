"""The query sets mixing works on: a tuning and an evaluation set of one split (a
seeded held-out half each, cut between annotations, never between the phrasings
of one), or a tuning split of its own, subsampled."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from harness.core.errors import HarnessError
from harness.evaluation.embed import SplitEmbeddings
from harness.evaluation.query_subset import query_subset
from harness.mixing.grid import normalized
from harness.suites.base import SplitData

PARTS = ("image", "text", "composed")  # SplitEmbeddings attributes of q, t, f


@dataclass
class Part:
    """The queries of one tuning or evaluation set (one per annotation, as the
    protocol scores them) with their normalised (q, t, f), against the split's whole
    gallery as the protocol scores it (pooled, never re-normalised here)."""

    name: str
    data: SplitData
    gallery: torch.Tensor
    parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor]

    @property
    def split(self) -> str:
        return self.data.split

    @property
    def pair_ids(self) -> list[int]:
        return [q.pair_id for q in self.data.queries]

    @property
    def gallery_ids(self) -> list[str]:
        return list(self.data.gallery)

    def embeddings(self, query: torch.Tensor) -> SplitEmbeddings:
        """`query` (Q, D) as the composed query of these queries, for the protocol."""
        return SplitEmbeddings(self.gallery_ids, self.gallery, query, None, None)

    def describe(self, rule: str) -> dict:
        return {"split": self.split, "rule": rule, "queries": len(self.pair_ids),
                "gallery_images": self.gallery.shape[0], "pair_ids_sha256": ids_sha256(self.pair_ids)}


def make_part(name: str, data: SplitData, emb, merge: Callable, rows: Sequence[int] | None = None) -> Part:
    """The queries at `rows` (all by default), merged by `merge` into one per
    annotation (an adapter's `merge`, harness/mixing/adapters), with (q, t, f) normalised."""
    for attr in (*PARTS, "gallery"):
        tensor = getattr(emb, attr)
        if tensor is None or tensor.ndim != 2:
            shape = None if tensor is None else tuple(tensor.shape)
            raise HarnessError(f"--mix needs single-vector (pooled) embeddings of q, t and f; {attr} is {shape}")
    if list(emb.gallery_ids) != list(data.gallery):
        raise HarnessError(f"--mix: the embeddings' gallery is not {data.suite}/{data.split}'s")
    if rows is not None:
        data, emb = query_subset(data, emb, rows)
    data, emb = merge(data, emb)
    return Part(name, data, emb.gallery, tuple(normalized(getattr(emb, attr)) for attr in PARTS))


def ids_sha256(pair_ids: Sequence[int]) -> str:
    return hashlib.sha256(json.dumps(list(pair_ids)).encode()).hexdigest()


def _order_key(seed: int, pair_id) -> str:
    return hashlib.sha256(f"{seed}:{pair_id}".encode()).hexdigest()


def _by_pair_ids(data: SplitData, rows: Sequence[int], keep: int, seed: int) -> tuple[list[int], list[int]]:
    """`rows` split by pair id: those of the first `keep` pair ids by the seeded
    hash order, and the rest; each keeps the split's order."""
    ids = sorted(dict.fromkeys(data.queries[i].pair_id for i in rows), key=lambda p: _order_key(seed, p))
    chosen = set(ids[:keep])
    first = [i for i in rows if data.queries[i].pair_id in chosen]
    return first, [i for i in rows if data.queries[i].pair_id not in chosen]


def heldout_halves(data: SplitData, seed: int) -> tuple[list[int], list[int]]:
    """Rows of the tuning and the evaluation half: pair ids ordered by
    sha256("<seed>:<pair id>"), the queries of the first floor(n/2) tune, the rest
    evaluate (n pair ids; the phrasings of one annotation stay together)."""
    count = len({q.pair_id for q in data.queries})
    return _by_pair_ids(data, range(len(data.queries)), count // 2, seed)


def subsample(data: SplitData, cap: int | None, seed: int) -> tuple[SplitData, str]:
    """The split's queries that have a target, those of at most `cap` pair ids (the
    first `cap` by the seeded hash order), under a split name that says so (its own
    cache entry)."""
    rows = [i for i, q in enumerate(data.queries) if q.target is not None]
    rule = f"queries with a target ({len(rows)} of {len(data.queries)})"
    if cap is not None and len({data.queries[i].pair_id for i in rows}) > cap:
        rows, _ = _by_pair_ids(data, rows, cap, seed)
        rule += f", those of the first {cap} pair ids by sha256('{seed}:<pair id>')"
        return data.take(rows, split=f"{data.split}-sample{cap}-seed{seed}"), rule
    return data.take(rows), rule
