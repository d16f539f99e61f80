"""Expansion by neighbours, query side and database side (Radenovic, Tolias, Chum,
"Fine-tuning CNN Image Retrieval with No Human Annotation", TPAMI 2018, alpha-QE;
Arandjelovic and Zisserman 2012 for database-side augmentation): vectors are
re-made, then scored by the same kernels.

- `alpha-qe`: q' = normalize(q + sum over its k nearest items g_i (cosine, its removed
  item left out) of max(s_i, 0)^alpha · g_i).
- `dba`: every gallery item g' = normalize(g + sum over its k nearest other items of
  max(s_i, 0)^alpha · g_i); the queries are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import coir_kernels
from harness.similarity.base import SIMILARITIES, Problem, Scoring, composed_only

SETTINGS = tuple({"k": k, "alpha": alpha} for k in (1, 2, 3, 5, 10) for alpha in (1.0, 3.0))


def expanded(vectors: torch.Tensor, gallery: torch.Tensor, exclude: torch.Tensor, k: int, alpha: float
             ) -> torch.Tensor:
    """normalize(v + sum of max(s_i, 0)^alpha g_i over v's k best items), (N, D) float32."""
    scores, top = coir_kernels.topk_excluding(vectors.float(), gallery.float(), k, exclude)
    weights = scores.clamp(min=0).pow(alpha)
    return F.normalize(vectors.float() + torch.einsum("nk,nkd->nd", weights, gallery.float()[top]), dim=-1)


def settings_for(problem: Problem) -> list[dict]:
    """The (k, alpha) grid tuned on the tuning half, k below the gallery's size."""
    return [dict(s) for s in SETTINGS if s["k"] < problem.emb.gallery.shape[0]]


class AlphaQE:
    name = "alpha-qe"
    needs_bank = False
    summary = "alpha query expansion (Radenovic et al. 2018): the query plus its k nearest items, weighted s^alpha"

    def settings(self, problem: Problem) -> list[dict]:
        return settings_for(problem)

    def scoring(self, problem: Problem, setting: dict) -> Scoring:
        query = expanded(problem.emb.composed, problem.emb.gallery, problem.exclude, setting["k"], setting["alpha"])
        return Scoring(composed_only(problem.emb, composed=query))


class DatabaseAugmentation:
    name = "dba"
    needs_bank = False
    summary = "database-side augmentation: every item plus its k nearest other items, weighted s^alpha"

    def settings(self, problem: Problem) -> list[dict]:
        return settings_for(problem)

    def scoring(self, problem: Problem, setting: dict) -> Scoring:
        gallery = problem.emb.gallery
        itself = torch.arange(gallery.shape[0])
        augmented = expanded(gallery, gallery, itself, setting["k"], setting["alpha"])
        return Scoring(composed_only(problem.emb, gallery=augmented))


SIMILARITIES.register("alpha-qe")(AlphaQE())
SIMILARITIES.register("dba")(DatabaseAugmentation())
