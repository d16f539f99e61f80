"""Gathered negatives: every rank's embeddings on every rank, with gradients.

`gather_with_grad(x)` concatenates the (b, d) shards of all ranks in rank order.
Forward is an all-gather. Backward sums the incoming gradients of the whole
(N*b, d) tensor over ranks (each rank computed the same loss over the same
gathered batch, so each holds a full copy of dL/dX) and returns this rank's
slice: rank r receives N * dL/dx_r. Data-parallel averaging of parameter
gradients (DeepSpeed, or the plain loop's all-reduce mean) divides by N again,
so N ranks with b pairs each produce exactly the loss and the gradients of one
process with N*b pairs. (open_clip's `gather_with_grad` is the same contract.)

All ranks must have the same b. With one process it is the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from harness.core.distributed import world_size


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.world, ctx.rows = dist.get_rank(), dist.get_world_size(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(ctx.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # gloo has no reduce_scatter: all-reduce the whole gradient, keep our rows.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    if world_size() == 1:
        return x
    return _AllGather.apply(x)
