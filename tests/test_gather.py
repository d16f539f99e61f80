"""Gathered negatives: N gloo ranks with b pairs each give the loss and, after the
data-parallel mean, the gradients of one process with the N*b pairs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.training.gather import gather_with_grad
from harness.training.losses import hn_nce
from tests._distributed import run_on_ranks

WORLD, LOCAL, DIM = 2, 5, 8


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(DIM, DIM, dtype=torch.float64)


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(WORLD * LOCAL, DIM, generator=g, dtype=torch.float64), \
        torch.randn(WORLD * LOCAL, DIM, generator=g, dtype=torch.float64)


def _embed(model, x):
    return F.normalize(model(x), dim=-1)


def _rank_step(rank: int, world: int):
    import torch.distributed as dist

    model = _model()
    queries, targets = _data()
    mine = slice(rank * LOCAL, (rank + 1) * LOCAL)
    q_local = _embed(model, queries[mine])
    gathered = gather_with_grad(q_local)
    forward_ok = torch.equal(gathered.detach(), _embed(model, queries).detach())
    loss = hn_nce(gathered, gather_with_grad(_embed(model, targets[mine])))
    loss.backward()
    grads = []
    for p in model.parameters():  # the data-parallel mean DeepSpeed / the plain engine take
        dist.all_reduce(p.grad)
        grads.append(p.grad / world)
    return {"loss": loss.item(), "grads": grads, "forward_ok": forward_ok}


@pytest.mark.slow
def test_two_ranks_match_one_process_on_the_union_batch(tmp_path):
    model = _model()
    queries, targets = _data()
    loss = hn_nce(_embed(model, queries), _embed(model, targets))
    loss.backward()
    for out in run_on_ranks(_rank_step, WORLD, tmp_path):
        assert out["forward_ok"]
        assert out["loss"] == pytest.approx(loss.item(), rel=1e-12)
        for got, want in zip(out["grads"], (p.grad for p in model.parameters())):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_single_process_is_the_identity():
    x = torch.randn(3, 4, requires_grad=True)
    assert gather_with_grad(x) is x
