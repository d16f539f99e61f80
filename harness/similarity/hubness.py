"""Hubness corrections with a query bank: a per-gallery-item offset to the score, so
they are scored exactly by the retrieval core (`coir_kernels.target_rank_counts(...,
offset=)`), the bank's statistics in one pass (`coir_kernels.bank_statistics`).

- `inverted-softmax` (querybank normalisation, Bogolin et al., CVPR 2022, "Cross Modal
  Retrieval with Querybank Normalisation"; ioanacroi/qb-norm dynamic_inverted_softmax.py
  lines 20-31, `qb_norm`: exp(beta·s) divided by the bank's column sums of exp(beta·s),
  beta 20 by default): per query this ranks as s(q,g) - logsumexp_b(beta·s(b,g)) / beta,
  the offset.
- `dynamic-inverted-softmax` (the same file, lines 7-18 and 26-30): the activation set
  is every gallery item that is some bank query's nearest (their k = 1, the default);
  a query whose own nearest item (cosine, its removed item left out) is in the set is
  scored with the offset, any other query by cosine.
- `csls` (Conneau et al., ICLR 2018, "Word translation without parallel data";
  facebookresearch/MUSE src/evaluation/word_translation.py, the `csls_knn_` branch of
  get_word_translation_accuracy): 2·s(q,g) - r_bank(g) - r_gallery(q), r_bank(g) the
  mean of g's k largest similarities to the bank; r_gallery(q) is the same for every
  item of a query's ranking, so it ranks as s(q,g) - r_bank(g) / 2, the offset.

Each also comes as "<name>-transductive": the bank is the evaluated queries
themselves, as several text-video papers use it; never the default.
"""

from __future__ import annotations

import torch

import coir_kernels
from harness.similarity.base import SIMILARITIES, Problem, Scoring, composed_only

BETAS = (10.0, 20.0, 30.0, 50.0, 100.0)  # inverted softmax temperatures tuned on the tuning half
CSLS_KS = (1, 5, 10, 20, 50)


def inverted_softmax_offset(bank: torch.Tensor, gallery: torch.Tensor, beta: float) -> torch.Tensor:
    """-logsumexp_b(beta·s(b,g)) / beta per gallery item, (G,) float32."""
    lse, _ = coir_kernels.bank_statistics(bank.float(), gallery.float(), beta, 1)
    return (-lse / beta).float()


def csls_offset(bank: torch.Tensor, gallery: torch.Tensor, k: int) -> torch.Tensor:
    """-r_bank(g) / 2 per gallery item, (G,) float32."""
    _, topk_mean = coir_kernels.bank_statistics(bank.float(), gallery.float(), 1.0, k)
    return (-topk_mean / 2).float()


class InvertedSoftmax:
    def __init__(self, name: str, transductive: bool):
        self.name, self.transductive = name, transductive
        self.needs_bank = not transductive
        self.summary = ("querybank normalisation, inverted softmax (Bogolin et al. 2022): "
                        "s - logsumexp_bank(beta s) / beta" + (", the evaluated queries as bank" if transductive else ""))

    def settings(self, problem: Problem) -> list[dict]:
        return [{"beta": beta} for beta in BETAS]

    def scoring(self, problem: Problem, setting: dict) -> Scoring:
        offset = inverted_softmax_offset(problem.bank_for(self.transductive), problem.emb.gallery, setting["beta"])
        return Scoring(composed_only(problem.emb, gallery_offset=offset))


class DynamicInvertedSoftmax(InvertedSoftmax):
    def __init__(self, name: str, transductive: bool):
        super().__init__(name, transductive)
        self.summary = ("dynamic inverted softmax (Bogolin et al. 2022): the offset only for queries whose "
                        "nearest item is some bank query's nearest" +
                        (", the evaluated queries as bank" if transductive else ""))

    def scoring(self, problem: Problem, setting: dict) -> Scoring:
        bank, gallery = problem.bank_for(self.transductive), problem.emb.gallery.float()
        none = torch.full((len(bank),), -1, dtype=torch.long)
        _, bank_nearest = coir_kernels.topk_excluding(bank.float(), gallery, 1, none)
        active = torch.zeros(len(gallery), dtype=torch.bool)
        active[bank_nearest[:, 0]] = True
        _, nearest = coir_kernels.topk_excluding(problem.emb.composed.float(), gallery, 1, problem.exclude)
        plain = composed_only(problem.emb)
        corrected = super().scoring(problem, setting).emb
        return Scoring(corrected, fallback=plain, fallback_rows=~active[nearest[:, 0]])


class Csls:
    def __init__(self, name: str, transductive: bool):
        self.name, self.transductive = name, transductive
        self.needs_bank = not transductive
        self.summary = ("CSLS (Conneau et al. 2018): 2s - r_bank(g) - r(q), r the mean of the k largest "
                        "similarities" + (", the evaluated queries as bank" if transductive else ""))

    def settings(self, problem: Problem) -> list[dict]:
        return [{"k": k} for k in CSLS_KS if k <= len(problem.bank_for(self.transductive))]

    def scoring(self, problem: Problem, setting: dict) -> Scoring:
        offset = csls_offset(problem.bank_for(self.transductive), problem.emb.gallery, setting["k"])
        return Scoring(composed_only(problem.emb, gallery_offset=offset))


for _cls, _name in ((InvertedSoftmax, "inverted-softmax"), (DynamicInvertedSoftmax, "dynamic-inverted-softmax"),
                    (Csls, "csls")):
    SIMILARITIES.register(_name)(_cls(_name, transductive=False))
    SIMILARITIES.register(f"{_name}-transductive")(_cls(f"{_name}-transductive", transductive=True))
