"""Checks on a split's embeddings before anything is scored, so that a damaged cache
entry or a broken backbone stops the run instead of yielding a wrong number.

An error names the tensor and what is wrong: an empty gallery, duplicate gallery
ids, ids that are not the split's, a row count that is not the number of queries,
an embedding width (or, for multi-vector BLIP-2 features, a rank) that differs
between queries and gallery, and NaN or infinite values (with the first ids or
pair ids affected).
"""

from __future__ import annotations

from collections import Counter

import torch

from harness.core.errors import HarnessError
from harness.suites.base import SplitData

SHOW = 5


def check_embeddings(data: SplitData, emb, methods: dict[str, str]) -> None:
    """Raise HarnessError unless `emb` (a SplitEmbeddings) can be scored for `data`.
    `methods` maps a results row to the query tensor it scores (e.g. "composed")."""
    where = f"embeddings of {data.suite}/{data.split}"
    ids = list(emb.gallery_ids)
    if not ids or emb.gallery.numel() == 0:
        raise HarnessError(f"{where}: the gallery is empty ({len(ids)} ids, shape {tuple(emb.gallery.shape)})")
    repeated = [gid for gid, n in Counter(ids).items() if n > 1]
    if repeated:
        raise HarnessError(f"{where}: {len(repeated)} gallery ids appear more than once: {_first(repeated)}")
    if ids != list(data.gallery):
        raise HarnessError(
            f"{where}: gallery ids are not the split's ({len(ids)} vs {len(data.gallery)} images, "
            f"first difference at position {_first_difference(ids, list(data.gallery))})"
        )
    if emb.gallery.shape[0] != len(ids):
        raise HarnessError(f"{where}: {emb.gallery.shape[0]} gallery rows for {len(ids)} gallery ids")
    _check_finite(emb.gallery, "gallery", ids, where)
    pair_ids = [q.pair_id for q in data.queries]
    for attr in dict.fromkeys(methods.values()):
        queries = getattr(emb, attr)
        if queries.shape[0] != len(pair_ids):
            raise HarnessError(f"{where}: {queries.shape[0]} {attr} rows for {len(pair_ids)} queries")
        if queries.shape[-1] != emb.gallery.shape[-1]:
            raise HarnessError(
                f"{where}: {attr} queries have dimension {queries.shape[-1]} but the gallery "
                f"{emb.gallery.shape[-1]} (shapes {tuple(queries.shape)} vs {tuple(emb.gallery.shape)})"
            )
        if queries.dim() not in (2, 3) or emb.gallery.dim() not in (2, 3):
            raise HarnessError(
                f"{where}: {attr} shape {tuple(queries.shape)} and gallery shape "
                f"{tuple(emb.gallery.shape)} are neither (N, D) nor multi-vector (N, T, D)"
            )
        _check_finite(queries, attr, [f"pair id {p}" for p in pair_ids], where)


def _check_finite(tensor: torch.Tensor, name: str, row_names: list, where: str) -> None:
    finite = torch.isfinite(tensor.reshape(tensor.shape[0], -1)).all(dim=1)
    if bool(finite.all()):
        return
    bad = (~finite).nonzero().flatten().tolist()
    kinds = " and ".join(
        kind for kind, found in (("NaN", torch.isnan(tensor).any()), ("inf", torch.isinf(tensor).any()))
        if bool(found)
    )
    raise HarnessError(
        f"{where}: {len(bad)} of {tensor.shape[0]} {name} rows hold {kinds} values "
        f"({_first([row_names[i] for i in bad])}). A damaged cache entry: rerun with --no-cache; "
        "a model overflowing in half precision: try --precision fp32"
    )


def _first(names: list) -> str:
    shown = ", ".join(str(n) for n in names[:SHOW])
    return shown + (f", ... and {len(names) - SHOW} more" if len(names) > SHOW else "")


def _first_difference(a: list, b: list) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
