"""Contrastive losses over a batch of (query, target) embedding pairs.

HN-NCE (Radenovic et al., 2023, as CoVR trains with it): the in-batch negatives
of each query are reweighted towards the hard ones,

    w_ij = (B - 1) * exp(beta * s_ij / tau) / sum_{k != i} exp(beta * s_ik / tau),
    w_ii = alpha,
    L_q2t(i) = -s_ii / tau + log sum_j w_ij exp(s_ij / tau),

and symmetrically for target -> query over columns; the loss is the sum of the two
means. alpha = 1, beta = 0 is InfoNCE (the symmetric sum of cross-entropies).
"""

from __future__ import annotations

import math

import torch


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
