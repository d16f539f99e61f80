"""Problems and assertions the Triton kernel tests share: seeded galleries with
exact ties (integer kinds) or without near-ties (random kinds: positives kept clear
of them in float64), and tolerant comparisons of scores and top-K lists."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any import of triton

import torch  # noqa: E402

from coir_kernels import reference, triton_ops  # noqa: E402

# The interpreted kernels run in this process only if triton's library agrees with them.
USABLE = triton_ops.INTERPRETED == triton_ops.LIBRARY_INTERPRETED

# Scores: the kernel sums fp32 products in another order than torch's matmul.
# fp16 inputs give exact fp32 products, so they differ from fp32 only in rounding of
# the sum; bf16 is checked on the GPU only (the interpreter computes bf16 wrongly).
TOLERANCE = {
    torch.float32: dict(atol=1e-4, rtol=1e-5),
    torch.float16: dict(atol=1e-4, rtol=1e-5),
    torch.bfloat16: dict(atol=1e-4, rtol=1e-5),
}

# Small blocks and several programs per query block: many tiles, several gallery
# splits (atomic adds, top-K merge across splits) and more than one D chunk.
SMALL_BLOCKS = dict(BLOCK_Q=16, BLOCK_G=32, BLOCK_D=16, num_warps=4, programs=8)


def make_problem(
    num_queries: int,
    num_gallery: int,
    dim: int,
    num_pos: int = 2,
    kind: str = "random",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    device: str = "cpu",
):
    """Queries, gallery, positives (-1 padded) and exclude (-1 for none), the
    positives never excluded (the harness removes them, as CIRR's reference image).

    kind: random (normal, no ties), integer (small integers: exact scores, ties
    everywhere), equal (every gallery row the same: all scores of a query equal),
    reference_best (the excluded item is a scaled copy of the query: the best match).
    """
    gen = torch.Generator().manual_seed(seed)
    if kind in ("random", "reference_best"):
        q = torch.randn(num_queries, dim, generator=gen)
        g = torch.randn(num_gallery, dim, generator=gen)
    elif kind == "integer":
        q = torch.randint(-2, 3, (num_queries, dim), generator=gen).float()
        g = torch.randint(-2, 3, (num_gallery, dim), generator=gen).float()
    elif kind == "equal":
        q = torch.randint(-3, 4, (num_queries, dim), generator=gen).float()
        q[0] = 0.0  # a zero query: scores +0.0 and -0.0, which compare equal
        g = torch.randint(-3, 4, (1, dim), generator=gen).float().expand(num_gallery, dim).clone()
    else:
        raise ValueError(kind)
    exclude = torch.randint(0, num_gallery, (num_queries,), generator=gen)
    if kind == "reference_best":
        exclude = torch.randperm(num_gallery, generator=gen)[:num_queries]
        g[exclude] = 4.0 * q
    else:
        exclude[::3] = -1
    positives = torch.randint(0, num_gallery, (num_queries, num_pos), generator=gen)
    q, g = q.to(dtype), g.to(dtype)
    positives[1::4, -1] = -1
    clash = positives == exclude[:, None]
    positives[clash] = (positives[clash] + 1) % num_gallery
    if kind in ("random", "reference_best"):  # (exact kinds: ties are exact, nothing is near)
        positives = isolated(positives, reference.similarity(q.double(), g.double()), exclude)
    return q.to(device), g.to(device), positives.to(device), exclude.to(device)


# Scores closer than this (in float64) are near-ties: two summation orders in fp32
# may order them either way, depending on the CPU. Problems keep positives clear of
# them, so exact count comparisons cannot depend on the machine.
NEAR_TIE = 1e-5


def isolated(positives: torch.Tensor, exact: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
    """Each positive (-1: padding, kept) moved to the next gallery index (cyclically)
    whose float64 score lies at least NEAR_TIE from every other item's and is not
    excluded."""
    ordered, order = exact.sort(dim=1)
    gap = ordered.diff(dim=1).abs()
    clear = torch.ones_like(ordered, dtype=torch.bool)
    clear[:, 1:] &= gap >= NEAR_TIE
    clear[:, :-1] &= gap >= NEAR_TIE
    free = torch.zeros_like(clear).scatter_(1, order, clear)
    rows = torch.arange(len(exclude))[exclude >= 0]
    free[rows, exclude[rows]] = False
    out = positives.clone()
    for i, p in (positives >= 0).nonzero().tolist():
        j = int(positives[i, p])
        out[i, p] = (j + int(torch.roll(free[i], -j).float().argmax())) % exact.shape[1]
    return out


def assert_counts_equal(got, expected, dtype):
    greater, equal, scores = got
    ref_greater, ref_equal, ref_scores = expected
    assert greater.dtype == equal.dtype == torch.int64 and scores.dtype == torch.float32
    assert greater.shape == equal.shape == scores.shape == ref_greater.shape
    pad = torch.isnan(ref_scores)
    assert torch.equal(torch.isnan(scores), pad)
    assert torch.equal(greater.cpu(), ref_greater.cpu())
    assert torch.equal(equal.cpu(), ref_equal.cpu())
    torch.testing.assert_close(scores[~pad].cpu(), ref_scores[~pad].cpu(), **TOLERANCE[dtype])


def assert_topk_equal(got, expected, dtype, query, gallery):
    """Indices equal, except where two items nearly tie: their float64 scores within
    NEAR_TIE but not equal, where the two summation orders may rank them either way
    on some CPU. Exact ties (equal float64 scores) must take the lower index first."""
    values, indices = got
    ref_values, ref_indices = expected
    assert indices.dtype == torch.int64 and values.dtype == torch.float32
    assert indices.shape == ref_indices.shape == values.shape
    exact = reference.similarity(query.double(), gallery.double()).cpu()
    rows = torch.arange(indices.shape[0])[:, None].expand_as(indices)
    ours, theirs = exact[rows, indices.cpu()], exact[rows, ref_indices.cpu()]
    differ = indices.cpu() != ref_indices.cpu()
    near = (ours - theirs).abs().lt(NEAR_TIE) & (ours != theirs)
    bad = (differ & ~near).nonzero().tolist()
    assert not bad, (
        f"{len(bad)} indices differ, first at {bad[0]}: kernel "
        f"{indices[tuple(bad[0])].item()} ({values[tuple(bad[0])].item()!r}) vs "
        f"reference {ref_indices[tuple(bad[0])].item()} ({ref_values[tuple(bad[0])].item()!r})"
    )
    torch.testing.assert_close(values.cpu(), ref_values.cpu(), **TOLERANCE[dtype])


SHAPES = [  # (Q, G, D, P): none a multiple of the blocks, or far below them
    (37, 301, 64, 3),
    (5, 1000, 256, 1),
    (1, 17, 8, 2),
]


WEIGHTS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0],
                        [0.25, 0.25, 0.5], [0.5, 0.0, 0.5], [0.125, 0.375, 0.5]])


def make_mixed_problem(num_queries, num_gallery, dim, num_pos=2, kind="random", seed=0):
    q, g, positives, exclude = make_problem(num_queries, num_gallery, dim, num_pos, kind, seed=seed)
    t, _, _, _ = make_problem(num_queries, num_gallery, dim, num_pos, kind, seed=seed + 1)
    f, _, _, _ = make_problem(num_queries, num_gallery, dim, num_pos, kind, seed=seed + 2)
    return (q, t, f), g, positives, exclude


def exact_unit_rows(num, dim, gen):
    """Rows with four entries +-1, the rest 0: norm 2, so normalising gives +-0.5
    exactly, every score is a multiple of 1/4 and ties are everywhere."""
    rows = torch.zeros(num, dim)
    for row in rows:
        row[torch.randperm(dim, generator=gen)[:4]] = torch.randint(0, 2, (4,), generator=gen) * 2.0 - 1
    return rows


def make_tokens(num, tokens, dim, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num, tokens, dim, generator=gen) if tokens else torch.randn(num, dim, generator=gen)
    return torch.nn.functional.normalize(x, dim=-1).to(dtype)


def near_tie_slack(scores, pos_scores, dtype):
    """Per (query, positive): how many items score within the tolerance of the
    positive: the most a count may move when two summation orders disagree."""
    tol = TOLERANCE[dtype]
    width = tol["atol"] + tol["rtol"] * pos_scores.abs()
    return ((scores[:, None, :] - pos_scores[:, :, None]).abs() <= width[:, :, None]).sum(-1)
