"""Bytes that autograd keeps for backward (activations saved by the forward
pass), measured with saved-tensor hooks: each distinct storage counted once,
parameters excluded. Unlike the process's peak RSS on CPU, this isolates what
the batch size (or the gradient-cache chunk) costs, on any device."""

from __future__ import annotations

import contextlib

import torch


class GraphMeter:
    def __init__(self, model: torch.nn.Module):
        self.param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.storages: dict[int, int] = {}
        self.peak = 0
        self.measured = False

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self.param_storages:
            self.storages[key] = storage.nbytes()
        # detached: a saved output packed as itself would hold its own grad_fn, a cycle
        # that outlives a graph never run backward (a forward branch the loss ignores)
        return tensor.detach()

    @contextlib.contextmanager
    def recording(self):
        """Measures the first step recorded and lets later ones run without hooks:
        every step of a run builds the same graph (one batch size, the last partial
        batch dropped), and a Python hook per saved tensor costs a few % of a small step."""
        if self.measured:
            yield
            return
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor):
            yield
        self.measured = True

    def graph_done(self) -> None:
        """Call after a backward: that graph's saved tensors are freed."""
        self.peak = max(self.peak, sum(self.storages.values()))
        self.storages.clear()
