"""Scoring a gallery split across 2 gloo ranks (harness/evaluation/sharded.py) gives
one process's counts, top-K lists and server files, copies across shards included."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from coir_kernels import reference, two_stage
from tests._distributed import run_on_ranks
from tests.coir_kernels.problems import assert_topk_equal, isolated, make_problem


def problem(tokens: int = 0, kind: str = "random"):
    """Copies within a shard, across shards and of a positive. Random kinds: the
    positives kept clear of near-ties (float64) in the final gallery, so counts cannot
    depend on a GEMM's blocking or on the GEMM each process picks; integer kind:
    exact scores, for comparing rankings bit for bit."""
    q, g, positives, exclude = make_problem(40, 301, 24, num_pos=2, kind=kind, seed=8)
    if kind == "random":
        q, g = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(g, dim=-1)
    g[20] = g[280]  # a copy across shards of an ordinary item
    g[21] = g[22]  # a copy within a shard
    if tokens:
        g = torch.stack([g, g.roll(1, 1), g.roll(2, 1), g.roll(3, 1)], 1)
    if kind == "random":
        tokens_of = g.double() if tokens else g.double()[:, None]
        positives = isolated(positives, torch.einsum("qd,gtd->qgt", q.double(), tokens_of).amax(-1), exclude)
    # a copy of query 0's first positive, in the other shard, on an item nothing else uses: an exact tie
    used = set(positives.flatten().tolist()) | set(exclude.tolist()) | {20, 21, 22, 280}
    other = range(151, 301) if positives[0, 0] < 151 else range(0, 151)
    g[next(j for j in other if j not in used)] = g[positives[0, 0]]
    return q, g, positives, exclude


def _score_on_rank(rank: int, world: int, tokens: int, dtype: torch.dtype):
    from harness.evaluation import sharded

    q, g, positives, exclude = problem(tokens)
    start, stop = sharded.shard_bounds(g.shape[0], rank, world)
    counts = sharded.target_rank_counts(q, g[start:stop], start, g.shape[0], positives, exclude, dtype)
    top = sharded.topk_excluding(q, g[start:stop], start, g.shape[0], 10, exclude)
    return counts, top


def _same(a, b) -> bool:
    return torch.equal(torch.nan_to_num(a, nan=-7.0), torch.nan_to_num(b, nan=-7.0))


def test_two_ranks_give_one_process_counts_and_top_k(tmp_path):
    for tokens, dtype in ((0, torch.float32), (0, torch.bfloat16), (4, torch.float32)):
        q, g, positives, exclude = problem(tokens)
        single = two_stage.target_rank_counts(q, g, positives, exclude, dtype)
        expected_top = reference.topk_excluding(q, g, 10, exclude)
        where = tmp_path / f"{tokens}-{str(dtype).split('.')[-1]}"
        where.mkdir()
        ranks = run_on_ranks(_score_on_rank, 2, where, tokens, dtype)
        for counts, top in ranks:
            assert all(_same(a, b) for a, b in zip(counts, single)), (tokens, dtype)
            assert_topk_equal(top, expected_top, torch.float32, q, g)
        fp32 = reference.target_rank_counts(q, g, positives, exclude)
        assert torch.equal(ranks[0][0][0], fp32[0]) and torch.equal(ranks[0][0][1], fp32[1])
        assert (single[1][0, 0] >= 1)  # the positive's copy on the other shard ties with it


def _server_files_on_rank(rank: int, world: int, out: str):
    from harness.evaluation import sharded
    from harness.evaluation.server_files import write_cirr_submissions

    q, g, positives, exclude = problem(kind="integer")
    start, stop = sharded.shard_bounds(g.shape[0], rank, world)
    _, top = sharded.topk_excluding(q, g[start:stop], start, g.shape[0], 50, exclude)
    if rank == 0:  # only rank 0 writes
        ids = [f"img{i}" for i in range(g.shape[0])]
        write_cirr_submissions(Path(out), "sharded", list(range(40)), [[ids[i] for i in row] for row in top.tolist()],
                               [[ids[i] for i in row[:3]] for row in top.tolist()])
    return None


def test_two_ranks_write_the_server_file_one_process_writes(tmp_path):
    from harness.evaluation.server_files import write_cirr_submissions

    (tmp_path / "ranks").mkdir()
    run_on_ranks(_server_files_on_rank, 2, tmp_path / "ranks", str(tmp_path))
    q, g, positives, exclude = problem(kind="integer")  # exact scores: the same ranking on any machine
    _, top = reference.topk_excluding(q, g, 50, exclude)
    ids = [f"img{i}" for i in range(g.shape[0])]
    single = write_cirr_submissions(tmp_path, "single", list(range(40)), [[ids[i] for i in row] for row in top.tolist()],
                                    [[ids[i] for i in row[:3]] for row in top.tolist()])
    sharded_file = tmp_path / "sharded.recall_submission.json"
    assert json.loads(sharded_file.read_text()) == json.loads(open(single["recall"]).read())

