"""`dual-softmax` (Cheng et al. 2021, "Improving Video-Text Retrieval by Multi-Stream
Corpus Alignment and Dual Softmax Loss", CAMoE; starmemda/CAMoE DSL.py line 9,
`sim_matrix * F.softmax(sim_matrix / temp, dim=0) * len(sim_matrix)`): each score is
multiplied by a prior, the softmax over the queries (dim 0) of its score with that
gallery item; the constant len(sim_matrix) changes no ranking, and T here multiplies
the cosine where CAMoE divides its logits. CAMoE's queries are the evaluated ones
(`dual-softmax-transductive`: the prior is exp(T·s(q,g) - logsumexp over the evaluated
queries, q among them)); `dual-softmax` puts the bank and the query itself in their place:
S(q,g) = s(q,g) · exp(T·s(q,g) - logaddexp(logsumexp_b(T·s(b,g)), T·s(q,g))),
in float64 (the prior is at most 1: nothing overflows). It is ranked by its logarithm
where s > 0 (the prior makes most products tiny, which fp32 and the two-stage kernels'
absolute error bound would not separate); items with s <= 0 score -1000 + S, below every
positive one (their order among themselves moves a count only for a target with s <= 0).
Scored as a dense matrix (harness/similarity/dense.py)."""

from __future__ import annotations

import torch

import coir_kernels
from harness.similarity.base import SIMILARITIES, Problem, Scoring
from harness.similarity.dense import cosine_scores, dense_scoring

TEMPERATURES = (10.0, 30.0, 100.0)


NON_POSITIVE = -1000.0  # where items with s <= 0 are placed, below every log-score


def log_prior(scores: torch.Tensor, bank_lse: torch.Tensor, temperature: float, with_query: bool) -> torch.Tensor:
    """log of the prior, (Q, G) float64: T·s(q,g) minus the log-sum over the bank, and over
    the query itself too with `with_query` (a bank that does not hold it)."""
    logits = temperature * scores
    normaliser = torch.logaddexp(bank_lse[None, :], logits) if with_query else bank_lse[None, :]
    return logits - normaliser


def dual_softmax_scores(scores: torch.Tensor, bank_lse: torch.Tensor, temperature: float,
                        with_query: bool = True) -> torch.Tensor:
    """S (Q, G) float64 from cosine scores (Q, G) and logsumexp_b(T·s(b,g)) (G,)."""
    return scores * torch.exp(log_prior(scores, bank_lse, temperature, with_query))


def ranked_scores(scores: torch.Tensor, bank_lse: torch.Tensor, temperature: float,
                  with_query: bool = True) -> torch.Tensor:
    """log S where s > 0, else -1000 + S: the same order as S, (Q, G) float64."""
    prior = log_prior(scores, bank_lse, temperature, with_query)
    log_score = torch.log(scores.clamp(min=1e-300)) + prior
    return torch.where(scores > 0, log_score, NON_POSITIVE + scores * torch.exp(prior))


class DualSoftmax:
    def __init__(self, name: str, transductive: bool):
        self.name, self.transductive = name, transductive
        self.needs_bank = not transductive
        self.summary = ("dual softmax (Cheng et al. 2021): s times the softmax of T s over the bank and the query"
                        + (", the evaluated queries as bank" if transductive else ""))

    def settings(self, problem: Problem) -> list[dict]:
        return [{"temperature": t} for t in TEMPERATURES]

    def scoring(self, problem: Problem, setting: dict) -> Scoring:
        lse, _ = coir_kernels.bank_statistics(problem.bank_for(self.transductive), problem.emb.gallery.float(), setting["temperature"], 1)
        # the evaluated queries as bank hold the query already: it is not added again
        return dense_scoring(problem, self.name, ranked_scores(cosine_scores(problem), lse.double(),
                                                               setting["temperature"], not self.transductive))


SIMILARITIES.register("dual-softmax")(DualSoftmax("dual-softmax", transductive=False))
SIMILARITIES.register("dual-softmax-transductive")(DualSoftmax("dual-softmax-transductive", transductive=True))
