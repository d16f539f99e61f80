"""Before the compiled Triton kernels score anything on a GPU, each operation is run
once per process on a small problem of its kind and compared with the reference
(exact counts, exact top-K). A kernel that disagrees is not used: a warning names
the operation and the card, and the reference scores instead. The kernels are
tested under TRITON_INTERPRET=1 on CPU, but the compiled path only meets real
hardware on a user's machine; this keeps a miscompilation from becoming a number.
The kernels with score offsets are other kernels: `op + WITH_OFFSET` checks them, on
the same problem with an offset per item.
"""

from __future__ import annotations

import warnings

import torch

_RESULTS: dict[tuple[str, str], bool] = {}
WITH_OFFSET = "+offset"


def _problem(device: torch.device, tokens: int = 0):
    gen = torch.Generator().manual_seed(0)
    shape = (300, tokens, 32) if tokens else (300, 32)
    gallery = torch.nn.functional.normalize(torch.randn(shape, generator=gen), dim=-1)
    target = torch.randint(0, 300, (40,), generator=gen)
    query = torch.nn.functional.normalize(gallery[target] + 0.5 * torch.randn(gallery[target].shape, generator=gen),
                                          dim=-1)
    gallery[7] = gallery[3]  # a copy
    exclude = (target + 1) % 300
    return query.to(device), gallery.to(device), target[:, None].to(device), exclude.to(device)


def _agrees(op: str, device: torch.device) -> bool:
    from coir_kernels import reference
    from coir_kernels import triton_ops as tk

    query, gallery, positives, exclude = _problem(device)
    offset = None
    if op.endswith(WITH_OFFSET):
        # steps of 1/8 (exact); in float64 no item comes within 1e-5 of a positive or a top-10 edge
        op = op.removesuffix(WITH_OFFSET)
        offset = (torch.arange(gallery.shape[0], device=device) % 5 - 2).float() / 8
    if op == "target_rank_counts":
        ours = tk.target_rank_counts(query, gallery, positives, exclude, offset=offset)
        theirs = reference.target_rank_counts(query, gallery, positives, exclude, offset=offset)
        return all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(ours[:2], theirs[:2]))
    if op == "topk_excluding":
        ours = tk.topk_excluding(query, gallery, 10, exclude, offset=offset)[1]
        theirs = reference.topk_excluding(query, gallery, 10, exclude, offset=offset)[1]
        return torch.equal(ours.cpu(), theirs.cpu())
    if op == "mixed_rank_counts":
        parts = (query, query.flip(0), query.roll(1, 0))
        weights = torch.tensor([[0.2, 0.3, 0.5], [0.0, 0.0, 1.0]], device=device)
        ours = tk.mixed_rank_counts(parts, gallery, weights, positives, exclude)
        theirs = reference.mixed_rank_counts(parts, gallery, weights, positives, exclude)
        return all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(ours[:2], theirs[:2]))
    return True


def passes(op: str, device: torch.device) -> bool:
    """Whether the Triton kernel of `op` agrees with the reference on `device` (checked
    once per process; a failure warns once)."""
    key = (op, str(device))
    if key not in _RESULTS:
        try:
            _RESULTS[key] = _agrees(op, device)
            problem = "disagrees with the reference"
        except Exception as err:  # noqa: BLE001 -- a kernel that cannot run is not used either
            _RESULTS[key] = False
            problem = f"failed ({type(err).__name__}: {err})"
        if not _RESULTS[key]:
            card = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
            warnings.warn(f"the Triton kernel for {op} {problem} on {card}: scoring with the reference instead "
                          "(exact, slower). Please report it.", stacklevel=3)
    return _RESULTS[key]
