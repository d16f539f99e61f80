"""`k-reciprocal` re-ranking (Zhong, Zheng, Cao, Li, CVPR 2017, "Re-ranking Person
Re-identification with k-reciprocal Encoding"; zhunzhong07/person-re-ranking
python-version/re_ranking_ranklist.py: lines 41-42 the squared distance over each row's
largest, 52-68 the reciprocal sets, their expansion and weights, 70-75 the local query
expansion, 84-93 the Jaccard distance and the mix): the final distance mixes the original
one with a Jaccard distance between k-reciprocal neighbourhoods,
d* = (1 - lambda)·d_J + lambda·d, scored as -d* (a dense matrix, harness/similarity/dense.py).

The paper's sets are built over every probe and gallery item together, so probes see
each other. Here a query never sees another query: its neighbourhood is taken over
itself and the gallery (a gallery item counts the query among its k1 nearest when the
query is nearer than that item's k1-th gallery neighbour), the gallery items'
neighbourhoods, expansions and local query expansion come from the gallery alone, and
the encoding's coordinates are the gallery items. d is the squared Euclidean distance
divided by each query's largest, as the paper's code scales it; the set expansion
(a half-size set joins when 2/3 of it is already in) and the Gaussian weights
exp(-d) follow the paper's Algorithm 1 and eq. 7-10."""

from __future__ import annotations

import torch

from harness.similarity.base import SIMILARITIES, Problem, Scoring
from harness.similarity.dense import dense_scoring

SETTINGS = ({"k1": 20, "k2": 6, "lambda": 0.3}, {"k1": 10, "k2": 3, "lambda": 0.3},
            {"k1": 20, "k2": 6, "lambda": 0.6}, {"k1": 10, "k2": 3, "lambda": 0.6})


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.double(), b.double()
    return ((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T).clamp(min=0)


def reciprocal_sets(order: torch.Tensor, k: int) -> list[set[int]]:
    """Each gallery item's k-reciprocal set within the gallery (itself included):
    `order` (G, G) each row's items nearest first, itself first."""
    near = [set(row[: k + 1]) for row in order.tolist()]
    return [{j for j in near[i] if i in near[j]} for i in range(len(near))]


def expanded(core: set[int], half_sets: list[set[int]]) -> set[int]:
    """The paper's expansion: the half-size set of each member of `core` joins when 2/3 of
    it is in `core`."""
    out = set(core)
    for c in core:
        half = half_sets[c]
        if len(half & core) > 2 / 3 * len(half):
            out |= half
    return out


def encoding(members: set[int], distances: torch.Tensor) -> torch.Tensor:
    """exp(-d) on the set's items, normalised to sum 1, (G,) float64."""
    v = torch.zeros_like(distances)
    index = torch.tensor(sorted(members), dtype=torch.long)
    v[index] = torch.exp(-distances[index])
    return v / v.sum()


def gallery_encodings(gallery: torch.Tensor, k1: int, k2: int) -> tuple[torch.Tensor, torch.Tensor, list[set[int]]]:
    """(V of every gallery item after local query expansion (G, G), each row's scaled
    distances' threshold for the query's reciprocity (G,), the half-size sets)."""
    d = squared_distances(gallery, gallery)
    d = d / d.max(dim=1, keepdim=True).values.clamp(min=1e-12)
    order = torch.argsort(d, dim=1, stable=True)
    sets, half_sets = reciprocal_sets(order, k1), reciprocal_sets(order, max(1, round(k1 / 2)))
    v = torch.stack([encoding(expanded(sets[i], half_sets), d[i]) for i in range(len(sets))])
    v = v[order[:, :k2]].mean(dim=1)
    return v, d.gather(1, order[:, k1 : k1 + 1]).squeeze(1), half_sets


def k_reciprocal_scores(query: torch.Tensor, gallery: torch.Tensor, k1: int, k2: int, lam: float) -> torch.Tensor:
    """-d* for every query and item, (Q, G) float64."""
    k1 = min(k1, gallery.shape[0] - 1)
    v_gallery, threshold, half_sets = gallery_encodings(gallery, k1, k2)
    raw = squared_distances(query, gallery)
    scaled = raw / raw.max(dim=1, keepdim=True).values.clamp(min=1e-12)
    gallery_scale = squared_distances(gallery, gallery).max(dim=1).values.clamp(min=1e-12)
    # a gallery item counts the query among its k1 nearest when nearer than its k1-th neighbour
    wants_query = raw / gallery_scale[None, :] < threshold[None, :]
    order = torch.argsort(scaled, dim=1, stable=True)
    out = torch.empty_like(scaled)
    for i in range(query.shape[0]):
        near = order[i, :k1].tolist()
        core = {g for g in near if bool(wants_query[i, g])}
        v = encoding(expanded(core, half_sets), scaled[i]) if core else torch.zeros_like(scaled[i])
        v = (v + v_gallery[order[i, : k2 - 1]].sum(0)) / k2  # local expansion: the query and its k2 - 1 nearest
        nz = torch.nonzero(v).squeeze(1)
        overlap = torch.minimum(v[nz][None, :], v_gallery[:, nz]).sum(1)
        jaccard = 1 - overlap / (2 - overlap)
        out[i] = -((1 - lam) * jaccard + lam * scaled[i])
    return out


class KReciprocal:
    name = "k-reciprocal"
    needs_bank = False
    summary = "k-reciprocal re-ranking (Zhong et al. 2017): Jaccard of k-reciprocal sets mixed with the distance"

    def settings(self, problem: Problem) -> list[dict]:
        return [dict(s) for s in SETTINGS]

    def scoring(self, problem: Problem, setting: dict) -> Scoring:
        scores = k_reciprocal_scores(problem.emb.composed, problem.emb.gallery, setting["k1"], setting["k2"],
                                     setting["lambda"])
        return dense_scoring(problem, self.name, scores)


SIMILARITIES.register("k-reciprocal")(KReciprocal())
