"""Gradient caching (Gao et al., 2021, "Scaling Deep Contrastive Learning Batch
Size under Memory Limited Setup"): a contrastive batch far larger than what fits
in memory as one graph, with exactly the full-batch gradients.

1. Embed the local batch chunk by chunk without a graph (the RNG state before
   each chunk is kept, so dropout draws the same masks in step 3).
2. Gather the embeddings of all ranks (`gather_with_grad`), compute the loss on
   the whole batch and its gradient with respect to this rank's embeddings: a
   graph of size (N*B)^2, not of the encoders.
3. Re-embed each chunk with a graph and backpropagate the cached embedding
   gradient through it: backward(sum(emb * grad)). Parameter gradients sum over
   the chunks to the full-batch gradients.

Memory is bounded by one chunk's graph. `backward` receives one surrogate scalar
per chunk: `tensor.backward` for plain torch, or the DeepSpeed engine's
backward-and-micro-step, which accumulates the chunks as micro-batches.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from harness.training.gather import gather_with_grad

# embed(start, end) -> (query embeddings, target embeddings) of local rows [start, end)
Embed = Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class RngState:
    """CPU and CUDA generator states, to replay a forward pass with the same dropout."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


def chunk_bounds(rows: int, chunk: int | None) -> list[tuple[int, int]]:
    size = rows if not chunk or chunk >= rows else chunk
    return [(s, min(s + size, rows)) for s in range(0, rows, size)]


def full_batch_step(rows: int, embed: Embed, loss_fn: Loss, backward: Callable[[torch.Tensor], None]) -> torch.Tensor:
    """The reference path: one graph over the whole local batch."""
    query, target = embed(0, rows)
    loss = loss_fn(gather_with_grad(query), gather_with_grad(target))
    backward(loss)
    return loss.detach()


def cached_step(
    rows: int,
    embed: Embed,
    loss_fn: Loss,
    backward: Callable[[torch.Tensor], None],
    chunk: int,
    device: torch.device,
) -> torch.Tensor:
    """Loss of the whole (gathered) batch; parameter gradients accumulated through
    `backward`, one call per chunk. Returns the detached loss."""
    bounds = chunk_bounds(rows, chunk)
    states, queries, targets = [], [], []
    with torch.no_grad():
        for start, end in bounds:
            states.append(RngState(device))
            query, target = embed(start, end)
            queries.append(query)
            targets.append(target)
    rng_after = RngState(device)
    # Both sides get a gradient here (every rank the same, so the gather's backward
    # collectives match); the target's is used only if its re-run has a graph (a
    # frozen, cached target side has none).
    query = torch.cat(queries).detach().requires_grad_()
    target = torch.cat(targets).detach().requires_grad_()
    loss = loss_fn(gather_with_grad(query), gather_with_grad(target))
    loss.backward()
    grad_query, grad_target = query.grad, target.grad
    for (start, end), state in zip(bounds, states):
        state.restore()
        chunk_query, chunk_target = embed(start, end)
        surrogate = (chunk_query.float() * grad_query[start:end]).sum()
        if chunk_target.requires_grad:
            surrogate = surrogate + (chunk_target.float() * grad_target[start:end]).sum()
        backward(surrogate)
    rng_after.restore()
    return loss.detach()
