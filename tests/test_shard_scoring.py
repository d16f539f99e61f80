"""The door to the retrieval core during a run (harness/evaluation/shard_scoring.py) on
2 gloo ranks: rank 0's calls are answered from the shards as coir_kernels answers
them, a gallery is sent again only when it changed, what cannot be sharded scores the
whole gallery on rank 0 and the record says so, and an error on rank 0 lets the other
rank go with an error of its own."""

from __future__ import annotations

import torch

import coir_kernels
from tests._distributed import run_on_ranks
from tests.coir_kernels.problems import make_problem


def problem():
    return make_problem(30, 101, 16, num_pos=2, kind="integer", seed=3)  # exact scores: any shard's GEMM bits


def _on_rank(rank: int, world: int):
    from harness.core.errors import HarnessError
    from harness.evaluation import shard_scoring

    if rank > 0:
        shard_scoring.serve()
        try:
            shard_scoring.serve()
        except HarnessError as err:
            return str(err)
        return "no error"
    sent = []
    real = shard_scoring._send_shards
    shard_scoring._send_shards = lambda *args: sent.append(1) or real(*args)
    q, g, positives, exclude = problem()
    with shard_scoring.session() as session:
        counts = shard_scoring.target_rank_counts(q, g, positives, exclude)
        top = shard_scoring.topk_excluding(q, g, 7, exclude)
        sharded_record, sends = session.record(), len(sent)
        g[60] = g[9]  # in place: rank 1's shard is stale
        changed = shard_scoring.target_rank_counts(q, g, positives, exclude)
        mark = session.mark()
        shard_scoring.target_rank_counts(q, g, positives, exclude, offset=torch.zeros(len(g)))
        with shard_scoring.whole_gallery():
            shard_scoring.topk_excluding(q, g, 7, exclude)
        records = (sharded_record, session.record(mark), session.record())
    try:
        with shard_scoring.session():
            raise HarnessError("rank 0 failed")
    except HarnessError:
        pass
    return counts, top, changed, sends, len(sent), records


def _same(a, b) -> bool:
    return all(torch.equal(torch.nan_to_num(x, nan=-7.0), torch.nan_to_num(y, nan=-7.0)) for x, y in zip(a, b))


def test_rank_zero_calls_are_answered_from_the_shards(tmp_path):
    zero, other = run_on_ranks(_on_rank, 2, tmp_path)
    counts, top, changed, sends_before, sends_after, records = zero
    q, g, positives, exclude = problem()
    assert _same(counts, coir_kernels.target_rank_counts(q, g, positives, exclude))
    assert _same(top, coir_kernels.topk_excluding(q, g, 7, exclude))
    g[60] = g[9]
    assert _same(changed, coir_kernels.target_rank_counts(q, g, positives, exclude))
    assert (sends_before, sends_after) == (1, 2)  # the same gallery once; again after it changed
    assert records[0] == {"gallery_sharded": True, "ranks": 2}
    assert records[1] == {"gallery_sharded": False, "ranks": 2, "whole_gallery_calls": "2 of 2 on rank 0"}
    assert records[2] == {"gallery_sharded": False, "ranks": 2, "whole_gallery_calls": "2 of 5 on rank 0"}
    assert other.startswith("rank 1: rank 0 stopped with an error")
