"""The plain-torch training engine: AdamW, gradient clipping and, across ranks,
an all-reduce mean of the gradients (what DDP does, without its bucketing). The
fast default for small models: no DeepSpeed start-up cost. `deepspeed_engine.py`
offers the same four methods on a DeepSpeed engine."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from harness.core.distributed import world_size


class TorchEngine:
    def __init__(self, model: torch.nn.Module, params: list[torch.nn.Parameter], lr: float,
                 weight_decay: float, grad_clip: float):
        self.model = model
        self.params = params
        self.grad_clip = grad_clip
        # fused: one pass over every parameter. torch's CPU default loops over the
        # tensors, about ten small ops each (90 tensors for blip-tiny), each a
        # thread-pool round trip that slows badly when another process shares the
        # cores (benches/train_profile.py times both).
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
        self.param_dtype = torch.float32  # autocast handles lower precision

    def backward(self, loss: torch.Tensor) -> None:
        """One chunk's (or the whole batch's) backward; gradients accumulate."""
        loss.backward()

    def step(self) -> None:
        world = world_size()
        if world > 1:
            for p in self.params:
                if p.grad is None:  # unused on every rank alike (a pooler, say)
                    continue
                dist.all_reduce(p.grad)
                p.grad.div_(world)
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def save(self, directory: Path, rank: int) -> None:
        """Ranks hold identical weights and optimizer states: rank 0 writes them."""
        if rank == 0:
            torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()},
                       directory / "engine.pt")

    def load(self, directory: Path) -> None:
        state = torch.load(directory / "engine.pt", map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def finish(self) -> None:
        """Nothing to undo: the model stayed in fp32."""
