"""Gradient caching: a batch embedded in chunks without a graph, the loss and its
embedding gradient computed on the whole batch, the chunks re-run with a graph,
gives the full-batch gradients: for HN-NCE, InfoNCE and covr-compat, with
dropout (replayed by RNG state), with and without gathering across ranks, and
inside the training loop on blip-tiny."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.training.grad_cache import cached_step, chunk_bounds, full_batch_step
from harness.training.losses import contrastive_loss
from tests._distributed import run_on_ranks

LOSSES = {"hn-nce": (1.0, 0.5), "info-nce": (1.0, 0.0), "covr-compat": (1.0, 0.5)}
ROWS, DIM, CHUNK = 12, 8, 5


class TwoTower(torch.nn.Module):
    """A query tower with dropout (its masks must be replayed) and a target tower."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.query = torch.nn.Sequential(torch.nn.Linear(DIM, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, DIM))
        self.target = torch.nn.Linear(DIM, DIM)
        self.double()


def _data(rows: int):
    g = torch.Generator().manual_seed(3)
    return torch.randn(rows, DIM, generator=g, dtype=torch.float64), \
        torch.randn(rows, DIM, generator=g, dtype=torch.float64)


def _loss(name: str):
    alpha, beta = LOSSES[name]
    return contrastive_loss("covr-compat" if name == "covr-compat" else "hn-nce", 0.07, alpha, beta)


def _embed(model, queries, targets):
    def run(start, end):
        return (F.normalize(model.query(queries[start:end]), dim=-1),
                F.normalize(model.target(targets[start:end]), dim=-1))
    return run


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


def test_chunk_bounds_cover_the_batch():
    assert chunk_bounds(12, 5) == [(0, 5), (5, 10), (10, 12)]
    assert chunk_bounds(12, None) == [(0, 12)] == chunk_bounds(12, 64)


@pytest.mark.parametrize("name", list(LOSSES))
def test_chunked_gradients_equal_full_batch(name):
    queries, targets = _data(ROWS)
    model = TwoTower()
    # The full-batch reference must draw the same dropout masks: one pass per chunk
    # with a graph, then the loss over all of them.
    torch.manual_seed(7)
    parts = [_embed(model, queries, targets)(s, e) for s, e in chunk_bounds(ROWS, CHUNK)]
    full = _loss(name)(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    full.backward()
    want = _grads(model)

    model.zero_grad()
    torch.manual_seed(7)
    calls = []
    loss = cached_step(ROWS, _embed(model, queries, targets), _loss(name),
                       lambda s: (calls.append(1), s.backward()), CHUNK, torch.device("cpu"))
    assert len(calls) == 3, "one backward per chunk"
    assert loss.item() == pytest.approx(full.item(), rel=1e-12)
    for got, expected in zip(_grads(model), want):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def _eval_model():
    model = TwoTower()
    model.eval()  # no dropout: ranks draw other random streams than one process does
    return model


def test_frozen_target_side_needs_no_target_graph():
    queries, targets = _data(ROWS)
    model = _eval_model()
    model.target.requires_grad_(False)
    full = full_batch_step(ROWS, _embed(model, queries, targets), _loss("hn-nce"), lambda s: s.backward())
    want = [p.grad.clone() for p in model.query.parameters()]
    model.zero_grad()
    cached = cached_step(ROWS, _embed(model, queries, targets), _loss("hn-nce"), lambda s: s.backward(),
                         4, torch.device("cpu"))
    assert cached.item() == pytest.approx(full.item(), rel=1e-12)
    for p, expected in zip(model.query.parameters(), want):
        torch.testing.assert_close(p.grad, expected, rtol=1e-9, atol=1e-12)
    assert all(p.grad is None for p in model.target.parameters())


def _rank_cached(rank: int, world: int, local: int, chunk: int):
    import torch.distributed as dist

    queries, targets = _data(world * local)
    mine = slice(rank * local, (rank + 1) * local)
    out = {}
    for name in ("hn-nce", "info-nce"):
        model = _eval_model()
        loss = cached_step(local, _embed(model, queries[mine], targets[mine]), _loss(name),
                           lambda s: s.backward(), chunk, torch.device("cpu"))
        grads = []
        for p in model.parameters():  # the data-parallel mean
            dist.all_reduce(p.grad)
            grads.append(p.grad / world)
        out[name] = {"loss": loss.item(), "grads": grads}
    return out


@pytest.mark.slow
def test_chunked_and_gathered_over_two_ranks_equals_one_full_batch(tmp_path):
    local, chunk = 6, 4
    outs = run_on_ranks(_rank_cached, 2, tmp_path, local, chunk)
    for name in ("hn-nce", "info-nce"):
        queries, targets = _data(2 * local)
        model = _eval_model()
        full = full_batch_step(2 * local, _embed(model, queries, targets), _loss(name), lambda s: s.backward())
        for out in outs:
            assert out[name]["loss"] == pytest.approx(full.item(), rel=1e-12), name
            for got, expected in zip(out[name]["grads"], _grads(model)):
                torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def _train(root, chunk, monkeypatch, train_vision=True):
    """Two optimizer steps of blip-tiny; the gradients each step saw (before AdamW,
    which turns near-zero gradients into sign-like updates and so amplifies
    rounding: weights are not a fair comparison)."""
    from backbones.blip_tiny import build_random
    from harness.config import RunConfig
    from harness.suites.shapes import ShapesSuite
    from harness.training.loop import fine_tune
    from harness.training.torch_engine import TorchEngine

    seen = []
    original = TorchEngine.step

    def recording_step(self):
        seen.append([p.grad.clone() for p in self.params if p.grad is not None])
        original(self)

    monkeypatch.setattr(TorchEngine, "step", recording_step)
    backbone = build_random(seed=3)
    config = RunConfig.resolve({"batch_size": 12, "epochs": 1, "max_train_queries": 24, "lr": 1e-3,
                                "warmup_steps": 0, "grad_cache_chunk": chunk, "train_vision": train_vision})
    result = fine_tune(backbone, ShapesSuite(root).load("train"), config.training(), torch.device("cpu"), "fp32")
    monkeypatch.undo()
    return result, seen


@pytest.mark.parametrize("train_vision", [True, False], ids=["vision-trained", "vision-frozen"])
def test_training_loop_with_gradient_caching_matches_full_batches(tmp_path, monkeypatch, train_vision):
    """Frozen vision (CoVR's recipe): cached targets, ViT tokens kept between the passes."""
    from harness.suites.shapes import ensure_dataset
    from harness.suites.shapes_generator import ShapesSpec

    ensure_dataset(tmp_path, ShapesSpec(seed=4, sets={"train": 8, "val": 4, "test1": 2},
                                        queries_per_set={"train": 3, "val": 1, "test1": 1}))
    full, full_grads = _train(tmp_path, None, monkeypatch, train_vision)
    cached, cached_grads = _train(tmp_path, 5, monkeypatch, train_vision)
    assert cached.grad_cache_chunk == 5 and full.grad_cache_chunk is None
    assert cached.targets_cached == full.targets_cached == (not train_vision)
    assert cached.peak_graph_bytes < full.peak_graph_bytes
    assert cached.step_losses == pytest.approx(full.step_losses, rel=1e-5)
    assert len(full_grads) == len(cached_grads) == 2
    # The first step's gradients (the second sees weights that AdamW's first, sign-like
    # update already moved apart by rounding). fp32 sums in another order: compare
    # tensor-wise, relative to the gradient's norm.
    for want, got in zip(full_grads[0], cached_grads[0]):
        assert (got - want).norm() <= 1e-4 * want.norm() + 1e-9
