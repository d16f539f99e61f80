"""Contrastive losses over a batch of (query, target) embedding pairs.

HN-NCE (Radenovic et al., 2023, as CoVR trains with it): the in-batch negatives
of each query are reweighted towards the hard ones,

    w_ij = (B - 1) * exp(beta * s_ij / tau) / sum_{k != i} exp(beta * s_ik / tau),
    w_ii = alpha,
    L_q2t(i) = -s_ii / tau + log sum_j w_ij exp(s_ij / tau),

and symmetrically for target -> query over columns; the loss is the sum of the two
means. alpha = 1, beta = 0 is InfoNCE (the symmetric sum of cross-entropies).

`covr-compat` reproduces CoVR's released `HardNegativeNCE` (src/model/loss.py)
exactly, including its one deviation from the definition: the query -> target
weights are normalised with `exp(beta*S).sum(dim=1)`, a vector of row sums that
broadcasts along the last axis, so entry [i, j] is divided by row *j*'s sum of
negatives (sum_{k != j} exp(beta s_jk / tau)) instead of row i's. The weights of a
row then no longer average to 1 over its negatives, and harder rows are not the
ones reweighted. Its target -> query direction (column sums, broadcast along the
last axis: column j divided by column j's sum) is correct. With beta = 0 both
losses are InfoNCE. It also works in linear space (exp of logits up to 1/tau =
14.3, fine in fp32) where `hn_nce` works in log space.

`clip4cir` is the loss CLIP4Cir trains its Combiner with (ABaldrati/CLIP4Cir at
dfed9f7, src/combiner.py:44-48 and src/combiner_train.py:347-350): cross-entropy of
each query's row of logits q_i . t_j / tau against its own target, the query -> target
direction only, averaged over the batch; CLIP4Cir's tau is 1/100 (a fixed logit scale).
Scoring every target alike gives ln(batch) for it, 2 ln(batch) for the symmetric losses
(`chance_loss`).

`pic2word` is Pic2Word's loss (google-research/composed_image_retrieval at 8c05329,
src/trainer.py:146-155): the cross-entropy of each image against the batch's texts
and of each text against the images, at CLIP's own logit scale, and the *mean* of
the two, so half of InfoNCE (which sums them) at the same temperature. Its scale is
the frozen CLIP's exp(logit_scale) (src/trainer.py:109): 100 for OpenAI's CLIP,
temperature 0.01.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

LOSSES = ("hn-nce", "covr-compat", "clip4cir", "pic2word")


def hn_nce(
    query: torch.Tensor,
    target: torch.Tensor,
    temperature: float = 0.07,
    alpha: float = 1.0,
    beta: float = 0.5,
) -> torch.Tensor:
    logits = (query.float() @ target.float().T) / temperature
    return _directional(logits, alpha, beta) + _directional(logits.T, alpha, beta)


def info_nce(query: torch.Tensor, target: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    return hn_nce(query, target, temperature, alpha=1.0, beta=0.0)


def _directional(logits: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """Row i: query i against every target. Computed in log space for stability."""
    size = logits.shape[0]
    if size < 2:
        raise ValueError("a contrastive batch needs at least 2 pairs")
    diagonal = torch.eye(size, dtype=torch.bool, device=logits.device)
    # log w_ij for j != i: log(B-1) + beta*l_ij - logsumexp_{k != i}(beta*l_ik);
    # Gradients flow through the weights too, as in CoVR's implementation.
    scaled = (beta * logits).masked_fill(diagonal, float("-inf"))
    log_w = math.log(size - 1) + scaled - torch.logsumexp(scaled, dim=1, keepdim=True)
    log_w = log_w.masked_fill(diagonal, math.log(alpha) if alpha > 0 else float("-inf"))
    denominator = torch.logsumexp(logits + log_w, dim=1)
    return (denominator - logits.diagonal()).mean()


def hn_nce_covr_compat(
    query: torch.Tensor,
    target: torch.Tensor,
    temperature: float = 0.07,
    alpha: float = 1.0,
    beta: float = 0.5,
) -> torch.Tensor:
    """CoVR's HardNegativeNCE, operation for operation (query rows, target columns)."""
    size = query.shape[0]
    if size < 2:
        raise ValueError("a contrastive batch needs at least 2 pairs")
    sim = (query.float() @ target.float().T) / temperature
    nominator = torch.diagonal(sim)
    exp_beta = torch.exp(beta * sim)
    diag_beta = torch.exp(torch.diagonal(beta * sim))
    # (B,) vectors broadcast along the last axis: [i, j] / (rowsum_j - diag_j) for q2t
    # (CoVR's quirk), [i, j] / (colsum_j - diag_j) for t2q (as defined).
    w_q2t = (size - 1) * exp_beta / (exp_beta.sum(dim=1) - diag_beta)
    w_t2q = (size - 1) * exp_beta / (exp_beta.sum(dim=0) - diag_beta)
    eye = torch.eye(size, dtype=torch.bool, device=sim.device)
    w_q2t = w_q2t.masked_fill(eye, alpha)
    w_t2q = w_t2q.masked_fill(eye, alpha)
    denominator_q2t = torch.log((torch.exp(sim) * w_q2t).sum(dim=1))
    denominator_t2q = torch.log((torch.exp(sim) * w_t2q).sum(dim=0))
    return (denominator_q2t - nominator).mean() + (denominator_t2q - nominator).mean()


def clip4cir_loss(query: torch.Tensor, target: torch.Tensor, temperature: float = 0.01) -> torch.Tensor:
    """CLIP4Cir's Combiner loss: one direction, query rows against the batch's targets."""
    return F.cross_entropy(_logits(query, target, temperature), torch.arange(query.shape[0], device=query.device))


def pic2word_loss(query: torch.Tensor, target: torch.Tensor, temperature: float = 0.01) -> torch.Tensor:
    """Pic2Word's loss: the mean of the two directions' cross-entropies."""
    logits = _logits(query, target, temperature)
    labels = torch.arange(query.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _logits(query: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    if query.shape[0] < 2:
        raise ValueError("a contrastive batch needs at least 2 pairs")
    return (query.float() @ target.float().T) / temperature


def chance_loss(name: str, batch_size: int) -> tuple[float, str]:
    """The loss `name` gives when every candidate scores alike, and how it is written: each
    direction's ln(batch), summed (hn-nce, covr-compat), one way (clip4cir) or averaged
    (pic2word)."""
    if name in ("clip4cir", "pic2word"):
        return math.log(batch_size), "ln(batch)"
    return 2 * math.log(batch_size), "2 ln(batch)"


def contrastive_loss(
    name: str, temperature: float, alpha: float, beta: float
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The configured loss as a function of (query, target) embeddings."""
    if name == "hn-nce":
        return lambda q, t: hn_nce(q, t, temperature, alpha, beta)
    if name == "covr-compat":
        return lambda q, t: hn_nce_covr_compat(q, t, temperature, alpha, beta)
    if name == "clip4cir":
        return lambda q, t: clip4cir_loss(q, t, temperature)
    if name == "pic2word":  # alpha and beta do not apply
        return lambda q, t: pic2word_loss(q, t, temperature)
    raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
