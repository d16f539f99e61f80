"""BLIP-2's max-sim in the fused kernels: (Q, S, D) x (G, T, D) reduced inside the tile,
against the reference, interpreted on CPU."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any import of triton

import pytest  # noqa: E402
import torch  # noqa: E402

import coir_kernels  # noqa: E402
from coir_kernels import reference  # noqa: E402
from coir_kernels import triton_ops as tk  # noqa: E402
from tests.coir_kernels.problems import (  # noqa: E402
    assert_counts_equal,
    assert_topk_equal,
    make_tokens,
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("tokens", [(32, 32), (0, 32), (8, 16)], ids=lambda t: f"{t[0]}x{t[1]}")
def test_maxsim_rank_counts_and_topk_match_reference(tokens, dtype):
    s_tok, t_tok = tokens
    q = make_tokens(13, s_tok, 32, seed=1, dtype=dtype)
    g = make_tokens(45, t_tok, 32, seed=2, dtype=dtype)  # 45: not a multiple of any block
    gen = torch.Generator().manual_seed(3)
    positives = torch.randint(0, 45, (13, 2), generator=gen)
    positives[::4, 1] = -1
    exclude = (positives[:, 0] + 1) % 45
    exclude[::3] = -1
    got = tk.target_rank_counts(q, g, positives, exclude)
    assert_counts_equal(got, reference.target_rank_counts(q, g, positives, exclude), dtype)
    for k in (1, 50):
        assert_topk_equal(tk.topk_excluding(q, g, k, exclude), reference.topk_excluding(q, g, k, exclude),
                          dtype, q, g)


def test_maxsim_duplicates_tie_and_public_functions_dispatch_to_the_kernel(monkeypatch):
    q = make_tokens(9, 32, 16, seed=4)
    g = make_tokens(40, 32, 16, seed=5)
    g[[11, 30]] = g[2].clone()  # copies of the positive in other blocks
    positives = torch.full((9, 1), 2)
    exclude = torch.full((9,), -1)
    calls = []
    real = tk.target_rank_counts
    monkeypatch.setattr(tk, "target_rank_counts", lambda *a: calls.append("rank") or real(*a))
    greater, equal, _ = coir_kernels.target_rank_counts(q, g, positives, exclude, impl="triton")
    assert calls == ["rank"]
    assert (equal[:, 0] == 2).all()
    assert torch.equal(greater, reference.target_rank_counts(q, g, positives, exclude)[0])
