"""HN-NCE against its definition written out directly (no log-space tricks)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.training.losses import (
    _directional,
    contrastive_loss,
    hn_nce,
    hn_nce_covr_compat,
    info_nce,
)


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


def covr_released_direct(q, t, tau, alpha, beta):
    """CoVR's HardNegativeNCE written element by element: its query -> target weight
    [i, j] is normalised by row j's sum of negatives (the broadcast of a row-sum
    vector along the last axis), its target -> query weight [i, j] by column j's."""
    s = (q @ t.T) / tau
    b = s.shape[0]
    e = torch.exp(beta * s)
    row_neg = [sum(e[j, k] for k in range(b) if k != j) for j in range(b)]
    col_neg = [sum(e[k, j] for k in range(b) if k != j) for j in range(b)]
    q2t = t2q = 0.0
    for i in range(b):
        den = sum((alpha if j == i else (b - 1) * e[i, j] / row_neg[j]) * torch.exp(s[i, j]) for j in range(b))
        q2t = q2t + torch.log(den) - s[i, i]
    for j in range(b):
        den = sum((alpha if i == j else (b - 1) * e[i, j] / col_neg[j]) * torch.exp(s[i, j]) for i in range(b))
        t2q = t2q + torch.log(den) - s[j, j]
    return q2t / b + t2q / b


@pytest.mark.parametrize("alpha,beta", [(1.0, 0.5), (0.5, 1.0)])
def test_covr_compat_reproduces_the_released_loss(alpha, beta):
    torch.manual_seed(2)
    q = F.normalize(torch.randn(6, 16, dtype=torch.float64), dim=-1)
    t = F.normalize(torch.randn(6, 16, dtype=torch.float64), dim=-1)
    ours = hn_nce_covr_compat(q, t, 0.07, alpha, beta)
    # fp32, as CoVR computes it (sim_matrix.float())
    assert ours.item() == pytest.approx(covr_released_direct(q, t, 0.07, alpha, beta).item(), rel=1e-6)
    # ... which is not HN-NCE as defined: its query -> target half differs, the other agrees.
    logits = (q.float() @ t.float().T) / 0.07
    t2q = _directional(logits.T, alpha, beta)
    assert ours.item() != pytest.approx(hn_nce(q, t, 0.07, alpha, beta).item(), rel=1e-4)
    assert (ours - t2q).item() != pytest.approx(_directional(logits, alpha, beta).item(), rel=1e-4)


def test_covr_compat_is_hn_nce_at_beta_zero_and_through_the_selector():
    torch.manual_seed(3)
    q = F.normalize(torch.randn(5, 8, dtype=torch.float64), dim=-1)
    t = F.normalize(torch.randn(5, 8, dtype=torch.float64), dim=-1)
    assert hn_nce_covr_compat(q, t, 0.07, 1.0, 0.0).item() == pytest.approx(info_nce(q, t).item(), rel=1e-6)
    loss = contrastive_loss("covr-compat", 0.07, 1.0, 0.5)
    assert loss(q, t).item() == pytest.approx(hn_nce_covr_compat(q, t).item(), rel=1e-12)
    with pytest.raises(ValueError, match="unknown loss"):
        contrastive_loss("nce", 0.07, 1.0, 0.5)
