"""The similarity-method contract, its registry, and what a method is handed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch

from harness.core.errors import HarnessError
from harness.core.registry import Registry
from harness.evaluation.embed import SplitEmbeddings
from harness.suites.base import SplitData


@dataclass(frozen=True)
class Problem:
    """One split's single-vector embeddings as the protocol scores them (pooled, not
    re-normalised), each query's removed gallery item (the reference rule's), the query
    bank (composed queries of another split: never the evaluated ones), the rows of
    the tuning half (the only queries whose targets a method may read) and the run's
    contrastive loss (for a method fitted on the tuning half)."""

    data: SplitData
    emb: SplitEmbeddings
    exclude: torch.Tensor  # (Q,) gallery index taken out of each query's ranking, -1 none
    bank: torch.Tensor | None  # (B, D) bank queries, None when the run has none
    tune_rows: tuple[int, ...]
    seed: int
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # the run's contrastive loss

    def bank_for(self, transductive: bool) -> torch.Tensor:
        """The query bank, or the evaluated queries themselves for a method named "-transductive"."""
        return self.emb.composed.float() if transductive else self.bank


@dataclass(frozen=True)
class Scoring:
    """What the protocol scores for a method: `emb` (composed queries only, maybe a
    gallery offset or a changed gallery); where `fallback_rows` is set, those queries
    are scored with `fallback` instead (each query's metric values depend on its own
    ranking only, so picking per query is exact)."""

    emb: SplitEmbeddings
    fallback: SplitEmbeddings | None = None
    fallback_rows: torch.Tensor | None = None  # (Q,) bool
    details: dict = field(default_factory=dict)  # what the method fitted, for the results (learned-linear)


class SimilarityMethod(Protocol):
    name: str
    needs_bank: bool  # reads Problem.bank (a run without a bank refuses it)
    summary: str  # one line for --help and the table: what it computes, after whom

    # The hyperparameter settings tuned on the tuning half ([{}]: nothing to tune).
    def settings(self, problem: Problem) -> list[dict]: ...

    def scoring(self, problem: Problem, setting: dict) -> Scoring: ...


SIMILARITIES: Registry[SimilarityMethod] = Registry("similarity method")


def composed_only(emb: SplitEmbeddings, **changes) -> SplitEmbeddings:
    """`emb` with the baselines dropped (only the composed row is scored) and `changes` made."""
    return replace(emb, image=None, text=None, **changes)


def check_single_vector(emb: SplitEmbeddings) -> None:
    if emb.composed.ndim != 2 or emb.gallery.ndim != 2:
        raise HarnessError("similarity methods need one vector per item: multi-vector features scored by the "
                           "max over token pairs are not (use --token-pooling mean)")
