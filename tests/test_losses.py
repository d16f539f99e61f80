"""HN-NCE against its definition written out directly (no log-space tricks)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.losses import hn_nce, info_nce


def hn_nce_direct(q, t, tau, alpha, beta):
    s = q @ t.T
    b = s.shape[0]

    def one_direction(sim):
        total = 0.0
        for i in range(b):
            negatives = [j for j in range(b) if j != i]
            z = sum(torch.exp(beta * sim[i, k] / tau) for k in negatives)
            denominator = alpha * torch.exp(sim[i, i] / tau)
            for j in negatives:
                w = (b - 1) * torch.exp(beta * sim[i, j] / tau) / z
                denominator = denominator + w * torch.exp(sim[i, j] / tau)
            total = total - torch.log(torch.exp(sim[i, i] / tau) / denominator)
        return total / b

    return one_direction(s) + one_direction(s.T)


@pytest.mark.parametrize("alpha,beta", [(1.0, 0.5), (1.0, 0.0), (0.5, 1.0)])
def test_hn_nce_matches_definition(alpha, beta):
    torch.manual_seed(0)
    q = F.normalize(torch.randn(7, 16, dtype=torch.float64), dim=-1)
    t = F.normalize(torch.randn(7, 16, dtype=torch.float64), dim=-1)
    ours = hn_nce(q, t, 0.07, alpha, beta)
    assert ours.item() == pytest.approx(hn_nce_direct(q, t, 0.07, alpha, beta).item(), rel=1e-5)


def test_beta_zero_is_symmetric_info_nce():
    torch.manual_seed(1)
    q = F.normalize(torch.randn(9, 8), dim=-1)
    t = F.normalize(torch.randn(9, 8), dim=-1)
    logits = q @ t.T / 0.07
    labels = torch.arange(9)
    expected = F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)
    assert info_nce(q, t).item() == pytest.approx(expected.item(), rel=1e-5)


def test_gradients_flow_and_batch_of_one_is_refused():
    q = F.normalize(torch.randn(4, 8), dim=-1).requires_grad_()
    hn_nce(q, F.normalize(torch.randn(4, 8), dim=-1)).backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    with pytest.raises(ValueError, match="at least 2"):
        hn_nce(torch.ones(1, 3), torch.ones(1, 3))
