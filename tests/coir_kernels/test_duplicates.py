"""Exact duplicates and ties whose counts cannot depend on the machine.

A matmul may give the same gallery row two different last bits at two positions
(BLAS blocking, SIMD lanes, tensor-core tiles), so the counts here are checked
against float64 scores on problems built to have no near-ties: every positive's
score lies at least MARGIN from every gallery item that is not a copy of it, far
above fp32 rounding, so only the copies' rule decides. The counts must then be
the same for every gallery order, chunk size and block size, in the reference and
in the Triton kernels (interpreted on CPU), with copies inside one block and
across blocks.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any import of triton

import pytest  # noqa: E402
import torch  # noqa: E402

from coir_kernels import duplicates, reference  # noqa: E402
from coir_kernels import triton_ops as tk  # noqa: E402

MARGIN = 1e-4  # fp32 scores of unit vectors with D <= 64 are off by < 1e-5
INTERPRETED = tk.INTERPRETED and tk.INTERPRETED == tk.LIBRARY_INTERPRETED
needs_interpreter = pytest.mark.skipif(not INTERPRETED, reason="needs the Triton interpreter in this process")

# (BLOCK_Q, BLOCK_G, BLOCK_D): one tile for everything, the harness's CPU blocks,
# and small ones that put copies in several tiles and gallery splits
BLOCKS = [
    dict(BLOCK_Q=64, BLOCK_G=1024, BLOCK_D=64, num_warps=4, programs=1),
    None,
    dict(BLOCK_Q=16, BLOCK_G=32, BLOCK_D=16, num_warps=4, programs=8),
]
# (query chunk, gallery tile) of the reference: copies in one tile, or in many
REFERENCE_TILES = [(None, 4096), (7, 64), (64, 33)]


# --------------------------------------------------------------------------------------
# Finding the groups
# --------------------------------------------------------------------------------------


def test_groups_are_numbered_by_their_first_row():
    g = torch.randn(10, 8)
    g[[4, 9]] = g[1].clone()
    g[[6, 7]] = g[0].clone()
    groups = duplicates.find(g)
    assert groups.first.tolist() == [0, 1]
    assert groups.group.tolist() == [0, 1, -1, -1, 1, -1, 0, 0, -1, 1]
    assert groups.members().tolist() == [0, 1, 4, 6, 7, 9]
    assert duplicates.find(torch.randn(10, 8)) is None
    assert duplicates.find(torch.randn(1, 8)) is None


def test_only_identical_bits_make_a_group():
    g = torch.randn(6, 100)
    g[1] = g[0]
    g[2] = g[0]
    g[2, 37] = torch.nextafter(g[0, 37], torch.tensor(10.0))  # one ulp apart, off the sampled columns
    g[3] = g[0]
    g[3, 0] = -g[3, 0]  # a sampled column differs
    zeros = torch.zeros(2, 100)
    zeros[1, 5] = -0.0  # -0.0 and +0.0 score the same: one group
    groups = duplicates.find(torch.cat([g, zeros]))
    assert groups.group.tolist() == [0, 0, -1, -1, -1, -1, 1, 1]


def test_multi_vector_items_are_copies_only_when_every_token_is():
    g = torch.randn(5, 4, 8)
    g[3] = g[1]
    g[4] = g[1]
    g[4, 2, 3] += 1.0
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert duplicates.find(g.to(dtype)).group.tolist() == [-1, 0, -1, 0, -1]


def test_rows_sharing_a_hash_are_compared_in_full():
    """Rows that agree on every sampled element but differ elsewhere: one candidate
    hash, two distinct rows, no group; their copies still group correctly."""
    g = torch.zeros(6, 1000)
    g[:, 300] = 1.0  # not sampled: the hash reads columns 0-7, 496-503 and 992-999
    g[0, 300], g[1, 300] = 2.0, 3.0
    g[2] = g[0]
    g[3] = g[1]
    hashes = duplicates._candidate_hash(g)
    assert (hashes == hashes[0]).all()  # one hash for all six rows
    groups = duplicates.find(g)
    assert groups.group.tolist() == [0, 1, 0, 1, 2, 2]


# --------------------------------------------------------------------------------------
# Problems without near-ties
# --------------------------------------------------------------------------------------


def _unit(shape, gen):
    return torch.nn.functional.normalize(torch.randn(shape, generator=gen), dim=-1)


def scores64(query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """float64 scores by the rules of reference.similarity (max over token pairs)."""
    q, g = query.double(), gallery.double()
    if q.ndim == 2 and g.ndim == 2:
        return q @ g.T
    q = q[:, None] if q.ndim == 2 else q
    g = g[:, None] if g.ndim == 2 else g
    return torch.einsum("qsd,gtd->qgst", q, g).amax(dim=(-1, -2))


def copy_mask(gallery: torch.Tensor) -> torch.Tensor:
    """(G, G) bool: rows i and j are bitwise identical (i == j included)."""
    flat = gallery.reshape(gallery.shape[0], -1)
    return (flat[:, None, :] == flat[None, :, :]).all(-1)


def with_copies(gallery: torch.Tensor) -> torch.Tensor:
    """Copies of row 3 inside one block (4, 5) and across blocks (40, 300, last);
    copies of row 10 across blocks (11, 200); every index in range for G >= 301."""
    g = gallery.clone()
    g[[4, 5, 40, 300, g.shape[0] - 1]] = g[3].clone()
    g[[11, 200]] = g[10].clone()
    return g


def isolated_positives(all_scores: torch.Tensor, copies: torch.Tensor, exclude: torch.Tensor,
                       wanted: list[int], num_pos: int) -> torch.Tensor:
    """(Q, num_pos) positives: `wanted` first where isolated, then the lowest indices
    whose score is at least MARGIN from every item that is not one of its copies."""
    rows = []
    for i in range(all_scores.shape[0]):
        gap = (all_scores[i][:, None] - all_scores[i][None, :]).abs()
        near = ((gap < MARGIN) & ~copies).any(0)  # (G,): some non-copy lies within the margin
        near[exclude[i]] = True  # the excluded item is never a positive
        near |= copies[exclude[i]] & (exclude[i] >= 0)  # nor its copies (kept simple)
        free = [j for j in wanted if not near[j]] + torch.nonzero(~near).squeeze(1).tolist()
        rows.append(list(dict.fromkeys(free))[:num_pos])
    assert all(len(r) == num_pos for r in rows)
    positives = torch.tensor(rows)
    positives[1::4, -1] = -1  # padding
    return positives


def expected_counts(all_scores, copies, positives, exclude):
    """float64 counts where copies tie: greater = items above the positive (its
    copies excepted), equal = its copies; the excluded item takes no part."""
    greater = torch.zeros(positives.shape, dtype=torch.int64)
    equal = torch.zeros(positives.shape, dtype=torch.int64)
    for i in range(positives.shape[0]):
        valid = torch.ones(all_scores.shape[1], dtype=torch.bool)
        if exclude[i] >= 0:
            valid[exclude[i]] = False
        for p, j in enumerate(positives[i].tolist()):
            if j < 0:
                continue
            others = valid.clone()
            others[j] = False
            same = copies[j]
            greater[i, p] = (others & ~same & (all_scores[i] > all_scores[i, j])).sum()
            equal[i, p] = (others & same).sum()
    return greater, equal


def make_problem(num_queries=40, num_gallery=333, dim=24, tokens=0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = (num_gallery, tokens, dim) if tokens else (num_gallery, dim)
    g = with_copies(_unit(shape, gen))
    q = _unit((num_queries, tokens, dim) if tokens else (num_queries, dim), gen)
    # a copy of row 3 or row 10, or a random row (never 3 or 10 themselves) excluded
    exclude = torch.randint(12, num_gallery, (num_queries,), generator=gen)
    exclude[::5] = -1
    exclude[1::5] = 4
    exclude[2::5] = 200
    all_scores, copies = scores64(q, g), copy_mask(g)
    positives = isolated_positives(all_scores, copies, exclude, [3, 10], num_pos=3)
    return q, g, positives, exclude, all_scores, copies


def permuted(seed, gallery, *indices):
    """The same problem with the gallery in another order (seed None: as it is);
    `indices` (gallery indices, -1 for none) follow their rows."""
    if seed is None:
        return (gallery, *indices)
    perm = torch.randperm(gallery.shape[0], generator=torch.Generator().manual_seed(seed))
    where = torch.empty_like(perm)
    where[perm] = torch.arange(len(perm))  # new position of each old row
    return (gallery[perm], *(torch.where(i >= 0, where[i.clamp(min=0)], -1) for i in indices))


def counts_of(impl, q, g, positives, exclude, setting, monkeypatch):
    if impl == "reference":
        chunk, tile = setting
        monkeypatch.setattr(reference, "GALLERY_TILE", tile)
        return reference.target_rank_counts(q, g, positives, exclude, chunk=chunk)
    return tk.target_rank_counts(q, g, positives, exclude, config=setting)


def settings(impl):
    return REFERENCE_TILES if impl == "reference" else BLOCKS


IMPLS = ["reference", pytest.param("triton", marks=needs_interpreter)]


# --------------------------------------------------------------------------------------
# Rank counts
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokens", [0, 4], ids=["single", "maxsim-4x4"])
@pytest.mark.parametrize("impl", IMPLS)
def test_rank_counts_do_not_depend_on_gallery_order_or_blocks(impl, tokens, monkeypatch):
    q, g, positives, exclude, all_scores, copies = make_problem(tokens=tokens, seed=tokens)
    want_greater, want_equal = expected_counts(all_scores, copies, positives, exclude)
    assert (want_equal[positives == 3] == 5).all() and (want_equal[positives == 10] == 2).all()
    assert (positives == 3).sum() >= 10  # the copies' rule is exercised, not avoided
    for seed in (None, 1, 2):
        g_, pos_, exc_ = permuted(seed, g, positives, exclude)
        for setting in settings(impl):
            greater, equal, _ = counts_of(impl, q, g_, pos_, exc_, setting, monkeypatch)
            real = positives >= 0
            assert torch.equal(greater[real], want_greater[real]), (seed, setting)
            assert torch.equal(equal[real], want_equal[real]), (seed, setting)


@pytest.mark.parametrize("impl", IMPLS)
def test_mixed_rank_counts_do_not_depend_on_gallery_order_or_blocks(impl, monkeypatch):
    gen = torch.Generator().manual_seed(5)
    weights = torch.tensor([[0.0, 0.0, 1.0], [0.25, 0.25, 0.5], [0.1, 0.3, 0.6]])
    g = with_copies(_unit((333, 24), gen))
    parts = tuple(_unit((40, 24), gen) for _ in range(3))
    exclude = torch.randint(12, 333, (40,), generator=gen)
    exclude[1::5] = 4
    copies = copy_mask(g)
    unit_g = torch.nn.functional.normalize(g.double(), dim=-1)
    mixed = [sum(w[k] * (torch.nn.functional.normalize(parts[k].double(), dim=-1) @ unit_g.T)
                 for k in range(3)) for w in weights.double()]
    # isolated under every triple: no non-copy within the margin of the positive
    wanted = []
    for i in range(40):
        near = torch.zeros(333, dtype=torch.bool)
        for s in mixed:
            near |= (((s[i][:, None] - s[i][None, :]).abs() < MARGIN) & ~copies).any(0)
        wanted.append(near)
    positives = torch.tensor([[j for j in [3, 10, *range(333)] if not wanted[i][j] and j != exclude[i]
                               and not copies[exclude[i], j]][:2] for i in range(40)])
    expected = [expected_counts(s, copies, positives, exclude) for s in mixed]
    assert (positives == 3).sum() >= 10
    for seed in (None, 3):
        g_, pos_, exc_ = permuted(seed, g, positives, exclude)
        for setting in settings(impl):
            if impl == "reference":
                greater, equal, _ = reference.mixed_rank_counts(parts, g_, weights, pos_, exc_,
                                                                chunk=setting[0])
            else:
                greater, equal, _ = tk.mixed_rank_counts(parts, g_, weights, pos_, exc_, config=setting)
            for w, (want_greater, want_equal) in enumerate(expected):
                assert torch.equal(greater[w], want_greater), (w, seed, setting)
                assert torch.equal(equal[w], want_equal), (w, seed, setting)


# --------------------------------------------------------------------------------------
# Top-K
# --------------------------------------------------------------------------------------


def expected_topk(all_scores, copies, exclude, k):
    """Per query: the k best indices, copies given one score (their first row's),
    ties in gallery order; None for a query whose top k+1 holds a near-tie between
    items that are not copies (the order there is rounding's to choose)."""
    first = copies.float().argmax(0)  # each row's first identical row
    canonical = all_scores[:, first]
    out = []
    for i in range(all_scores.shape[0]):
        row = canonical[i].clone()
        if exclude[i] >= 0:
            row[exclude[i]] = float("-inf")
        order = sorted(range(len(row)), key=lambda j: (-row[j].item(), j))[: k + 1]
        values = row[order]
        distinct = [(values[a] - values[a + 1]).abs() for a in range(k) if first[order[a]] != first[order[a + 1]]]
        out.append(order[:k] if all(d >= MARGIN for d in distinct) else None)
    return out


@pytest.mark.parametrize("impl", IMPLS)
def test_copies_come_in_gallery_order_in_the_top_k(impl):
    q, g, _, exclude, _, _ = make_problem(seed=7)
    q = torch.nn.functional.normalize(q + 3.0 * g[3], dim=-1)  # row 3 and its copies near the top
    for seed in (None, 4):
        g_, exc_ = permuted(seed, g, exclude)
        want = expected_topk(scores64(q, g_), copy_mask(g_), exc_, 10)
        checked = [i for i, w in enumerate(want) if w is not None]
        assert len(checked) >= 20
        for setting in ([None] if impl == "reference" else BLOCKS):
            if impl == "reference":
                _, indices = reference.topk_excluding(q, g_, 10, exc_)
            else:
                _, indices = tk.topk_excluding(q, g_, 10, exc_, config=setting)
            for i in checked:
                assert indices[i].tolist() == want[i], (i, seed, setting)
