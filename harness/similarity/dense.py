"""Methods whose score is not a vector product plus an item offset (dual softmax,
k-reciprocal re-ranking) hand the protocol their (Q, G) score matrix S as query
vectors over the identity gallery: q_i · e_g = S[i, g] exactly (one product by 1,
every other by 0), so the protocol's own rank counts, tie rule, image-set ranks and
per-query lists score S unchanged. It costs a Q x G x G product and a G x G
identity in memory, hence the gallery limit."""

from __future__ import annotations

import torch

from harness.core.errors import HarnessError
from harness.similarity.base import Problem, Scoring, composed_only

MAX_GALLERY = 20_000  # the identity gallery is MAX_GALLERY^2 fp32 values (1.6 GB)


def cosine_scores(problem: Problem) -> torch.Tensor:
    """Every query's score against every item, (Q, G) float64 (the protocol's products, exactly)."""
    return problem.emb.composed.double() @ problem.emb.gallery.double().T


def identity_gallery(data, emb, scores: torch.Tensor, what: str):
    """`emb` (composed only) scoring `scores` (Q, G) through the identity gallery; `what`
    names the option in the errors (check_score_matrix)."""
    gallery_size = emb.gallery.shape[0]
    check_score_matrix(data, gallery_size, what)
    return composed_only(emb, composed=scores.float(), gallery=torch.eye(gallery_size), gallery_offset=None)


def check_score_matrix(data, gallery_size: int, what: str) -> None:
    """What a score matrix cannot be scored for: a gallery over the limit, or queries the
    protocol merges by pair id; `what` names the option in the errors."""
    if gallery_size > MAX_GALLERY:
        raise HarnessError(f"{what} scores the whole (queries x gallery) matrix; a gallery of "
                           f"{gallery_size} items is over its limit of {MAX_GALLERY}")
    if len({q.pair_id for q in data.queries}) != len(data.queries):
        raise HarnessError(f"{what}: queries sharing a pair id (fashioniq-both-orders) are merged "
                           "by averaging their vectors, which a score matrix is not: use the fashioniq suite")


def dense_scoring(problem: Problem, name: str, scores: torch.Tensor) -> Scoring:
    if problem.emb.gallery.shape[0] > MAX_GALLERY:
        raise HarnessError(f"--similarity {name}: the gallery is over the limit of {MAX_GALLERY} items of a "
                           "score-matrix method: use a hubness correction (inverted-softmax, csls) or a "
                           "query-side method (alpha-qe, dba) instead")
    return Scoring(identity_gallery(problem.data, problem.emb, scores, f"--similarity {name}"))
