"""The autograd meter (harness/training/graph_memory.py): it counts what a graph saves
and keeps nothing alive itself."""

from __future__ import annotations

import gc
import weakref

import torch

from harness.training.graph_memory import GraphMeter


def test_a_graph_never_run_backward_is_freed_with_its_tensors():
    # A forward branch the loss ignores (CLIP's contrastive pre-training embeds the
    # reference image and reads only the caption) must not outlive its step.
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh())
    meter = GraphMeter(model)
    with meter.recording():
        unused = model(torch.randn(3, 4))  # tanh saves its output
    alive = weakref.ref(unused)
    del unused
    gc.disable()  # what the meter keeps must go by reference counting, not a later collection
    try:
        assert alive() is None
    finally:
        gc.enable()


def test_it_counts_saved_activations_not_parameters_and_leaves_gradients_alone():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x = torch.randn(5, 4)
    meter = GraphMeter(model)
    with meter.recording():
        loss = model(x).sum()
    loss.backward()
    meter.graph_done()
    metered = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).sum().backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(metered, model.parameters()))
    # saved: the input x (5x4), the first linear's output through tanh (5x8); no weights
    assert 0 < meter.peak <= (5 * 4 + 5 * 8 + 5 * 8) * 4


def test_only_the_first_step_is_measured():
    """Every step of a run builds the same graph: later steps run without the hooks."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh())
    meter = GraphMeter(model)
    with meter.recording():
        model(torch.randn(5, 4)).sum().backward()
    meter.graph_done()
    first = meter.peak
    with meter.recording():
        model(torch.randn(50, 4)).sum().backward()  # ten times the activations, unseen
    meter.graph_done()
    assert first > 0 and meter.peak == first
