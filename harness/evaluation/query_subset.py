"""Some of a split's queries with their embeddings, for scoring a part of a split
(the tuning and evaluation halves of mixing and of the similarity methods) through
the suite's own protocol: the gallery, its groups and frames stay whole; per-query
candidate galleries follow their queries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from harness.evaluation.embed import SplitEmbeddings
from harness.suites.base import SplitData


def query_subset(data: SplitData, emb: SplitEmbeddings, rows: Sequence[int]) -> tuple[SplitData, SplitEmbeddings]:
    """(data, embeddings) of the queries at `rows` (in that order), against the whole gallery."""
    index = torch.tensor(list(rows), dtype=torch.long)

    def take(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor[index]

    return (data.take(rows),
            replace(emb, composed=take(emb.composed), image=take(emb.image), text=take(emb.text)))
