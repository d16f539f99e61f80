"""The weight simplex, mixed queries and the element-wise rules."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from harness.core.errors import HarnessError

RULES = ("median", "max")  # the element-wise ways to combine q, t, f


def simplex_grid(step: float = 0.05) -> torch.Tensor:
    """Every (w0, w1, w2) with each weight a multiple of `step` summing to 1, (W, 3),
    w0 slowest: 231 triples at step 0.05."""
    n = round(1 / step)
    if n < 1 or abs(n * step - 1) > 1e-9:
        raise HarnessError(f"--mix-step must divide 1 (0.05, 0.1, 0.25 ...), not {step}")
    rows = [(i, j, n - i - j) for i in range(n + 1) for j in range(n + 1 - i)]
    return torch.tensor(rows, dtype=torch.float64).div(n).float()


def normalized(tensor: torch.Tensor) -> torch.Tensor:
    return F.normalize(tensor.float(), dim=-1)


def aggregate(parts: Sequence[torch.Tensor], rule: str) -> torch.Tensor:
    """Element-wise median or maximum of the normalised parts, L2-normalised, (Q, D)."""
    stacked = torch.stack([normalized(p) for p in parts])
    if rule == "median":
        values = stacked.median(dim=0).values  # the middle value of three
    elif rule == "max":
        values = stacked.amax(dim=0)
    else:
        raise ValueError(f"unknown aggregation rule {rule!r}; choose from {', '.join(RULES)}")
    return normalized(values)


def mix(parts: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """normalize(w0·q + w1·t + w2·f) of the normalised parts, (Q, D)."""
    return normalized(sum(w * normalized(p) for w, p in zip(weights, parts)))


def best_index(values: Sequence[float]) -> int:
    """The first triple (grid order) with the highest value."""
    return max(range(len(values)), key=lambda i: (values[i], -i))
