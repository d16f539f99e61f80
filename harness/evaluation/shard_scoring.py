"""Scoring over the ranks' gallery shards (torchrun): the one door through which the
protocols, the per-query records, the server files and the mixing sweep reach the
retrieval core. `target_rank_counts`, `topk_excluding` and `mixed_rank_counts` take
coir_kernels' arguments and return its answers.

In one process, or outside a session, they are coir_kernels' own calls. Under
torchrun, rank 0 holds the gathered embeddings and scores inside `session()` while
every other rank runs `serve()`: each call is announced to every rank with its
queries, positives and excluded items, each rank receives its contiguous shard of the
call's gallery (sent once per gallery tensor and kept while rank 0 passes the same
tensor again), and harness/evaluation/sharded.py (sharded_mixed.py for the sweep)
computes the whole gallery's answer from the shards, in the implementation one
process picks, so results, per-query files and server files are one process's.
Each rank's scoring then holds its shard of the gallery and the query-sized inputs;
rank 0 also keeps the whole gallery it gathered, which the protocols index around
the kernels (image-set members, FashionIQ's category columns, the sweep's lifted
gallery). Collectives go through a gloo group: scoring runs on the CPU copies of the
embeddings, on any launch.

Calls that do not shard simply score the whole gallery on rank 0, and the record says so:
- a per-item score offset (a similarity method's hubness correction);
- everything inside `whole_gallery()` (the similarity study: dense score matrices,
  query banks, k-reciprocal lists; re-ranking runs before the session, on rank 0);
- the Triton kernels (CUDA tensors), and max-sim counts where one process would take
  the fp32 reference (a CPU without native bf16);
- a gallery with fewer items than ranks.
`Session.record()` gives {"gallery_sharded": bool, "ranks": N} for a part of the run.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

import torch
import torch.distributed as dist

import coir_kernels
from coir_kernels import two_stage
from harness.core import distributed
from harness.core.errors import HarnessError
from harness.evaluation import sharded, sharded_mixed

STOP = "stop"


class Session:
    """Rank 0's side while the other ranks serve: the gallery whose shards they hold
    (kept, so its identity cannot pass to another tensor) and the calls made so far."""

    def __init__(self, world: int, group):
        self.world, self.group = world, group
        self.gallery: torch.Tensor | None = None
        self.version = -1
        self.shard: tuple[torch.Tensor, int] | None = None  # rank 0's own rows and their offset
        self.calls = {"sharded": 0, "whole": 0}
        self.whole_depth = 0  # inside whole_gallery()

    def mark(self) -> dict[str, int]:
        """The calls so far, for `record` of what follows."""
        return dict(self.calls)

    def record(self, since: dict[str, int] | None = None) -> dict:
        """{"gallery_sharded", "ranks"} of the calls since `since` (all by default):
        sharded only if some were and none scored the whole gallery on rank 0."""
        since = since or {"sharded": 0, "whole": 0}
        done = {kind: self.calls[kind] - since[kind] for kind in self.calls}
        out = {"gallery_sharded": self.world > 1 and done["sharded"] > 0 and done["whole"] == 0,
               "ranks": self.world}
        if self.world > 1 and done["whole"]:
            out["whole_gallery_calls"] = f"{done['whole']} of {done['whole'] + done['sharded']} on rank 0"
        return out

    def call(self, op: str, gallery: torch.Tensor, args: dict):
        """`op` on every rank, each with its shard of `gallery` (sent if it changed)."""
        fresh = gallery is not self.gallery or gallery._version != self.version
        _broadcast({"op": op, "args": args, "gallery": (tuple(gallery.shape), gallery.dtype) if fresh else None},
                   self.group)
        if fresh:
            self.gallery, self.version = gallery, gallery._version
            self.shard = _send_shards(gallery, self.world, self.group)
        self.calls["sharded"] += 1
        return _compute(op, args, self.shard, gallery.shape[0], self.group)


_session: Session | None = None


@functools.cache
def _scoring_group():
    """The gloo group scoring's collectives use: the default group where it is gloo,
    one beside it where it is nccl (made once, by every rank in the same order)."""
    return None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")


def _broadcast(header: dict | None, group) -> dict:
    box = [header]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def _send_shards(gallery: torch.Tensor, world: int, group) -> tuple[torch.Tensor, int]:
    """Rank r's rows to rank r; rank 0's own (a view) and their offset."""
    for rank in range(1, world):
        start, stop = sharded.shard_bounds(gallery.shape[0], rank, world)
        dist.send(gallery[start:stop].contiguous(), dst=rank, group=group)
    start, stop = sharded.shard_bounds(gallery.shape[0], 0, world)
    return gallery[start:stop], start


def _receive_shard(shape: tuple[int, ...], dtype: torch.dtype, rank: int, world: int, group
                   ) -> tuple[torch.Tensor, int]:
    start, stop = sharded.shard_bounds(shape[0], rank, world)
    rows = torch.empty((stop - start, *shape[1:]), dtype=dtype)
    dist.recv(rows, src=0, group=group)
    return rows, start


def _compute(op: str, args: dict, shard: tuple[torch.Tensor, int], total: int, group):
    """This rank's part of `op`: every rank returns the whole gallery's answer."""
    rows, offset = shard
    if op == "counts" and args["impl"] == "two-stage":
        return sharded.target_rank_counts(args["query"], rows, offset, total, args["positives"], args["exclude"],
                                          two_stage.format_for(args["query"]), group)
    if op == "counts":
        return sharded.tiled_rank_counts(args["query"], rows, offset, total, args["positives"], args["exclude"], group)
    if op == "topk":
        return sharded.topk_excluding(args["query"], rows, offset, total, args["k"], args["exclude"], group)
    return sharded_mixed.mixed_rank_counts(args["parts"], rows, offset, total, args["weights"], args["positives"],
                                           args["exclude"], args["impl"], group)


@contextmanager
def session():
    """Rank 0's scoring while the other ranks `serve` it (in one process: coir_kernels'
    own calls); yields the Session. The ranks are let go when it ends, on an error too
    (they then raise one as well). Inside a session, another is the same one."""
    global _session
    if _session is not None:
        yield _session
        return
    _, world = distributed.rank_and_world()
    current = Session(world, _scoring_group() if world > 1 else None)
    _session = current
    failed = True
    try:
        yield current
        failed = False
    finally:
        _session = None
        if world > 1:
            _broadcast({"op": STOP, "failed": failed}, current.group)


def serve() -> None:
    """A rank other than 0: its share of every call rank 0 makes in `session()`, until it
    ends; HarnessError if rank 0's ended with an error."""
    rank, world = distributed.rank_and_world()
    group = _scoring_group()
    shard, total = None, 0
    while True:
        header = _broadcast(None, group)
        if header["op"] == STOP:
            if header["failed"]:
                raise HarnessError(f"rank {rank}: rank 0 stopped with an error (its own message says which)")
            return
        if header["gallery"] is not None:
            shape, dtype = header["gallery"]
            shard, total = _receive_shard(shape, dtype, rank, world, group), shape[0]
        _compute(header["op"], header["args"], shard, total, group)


@contextmanager
def whole_gallery():
    """Inside: every call scores the whole gallery on rank 0 (features that do not shard simply)."""
    if _session is None:
        yield
        return
    _session.whole_depth += 1
    try:
        yield
    finally:
        _session.whole_depth -= 1


def _sharding(gallery: torch.Tensor, shards: bool) -> Session | None:
    """The session to shard this call over, or None (counted as a whole-gallery call)."""
    current = _session
    if current is None:
        return None
    if current.world == 1 or current.whole_depth or not shards or gallery.shape[0] < current.world:
        current.calls["whole"] += 1
        return None
    return current


def target_rank_counts(query: torch.Tensor, gallery: torch.Tensor, positives: torch.Tensor, exclude: torch.Tensor,
                       offset: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`coir_kernels.target_rank_counts`, over the ranks' shards in a session."""
    impl = coir_kernels.implementation("target_rank_counts", query, gallery) if _session else None
    single = query.ndim == 2 and gallery.ndim == 2
    current = _sharding(gallery, offset is None and (impl == "two-stage" or (impl == "reference" and single)))
    if current is None:
        return coir_kernels.target_rank_counts(query, gallery, positives, exclude, offset=offset)
    return current.call("counts", gallery, {"query": query, "positives": positives, "exclude": exclude, "impl": impl})


def topk_excluding(query: torch.Tensor, gallery: torch.Tensor, k: int, exclude: torch.Tensor,
                   offset: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`coir_kernels.topk_excluding`, over the ranks' shards in a session."""
    impl = coir_kernels.implementation("topk_excluding", query, gallery, k) if _session else None
    current = _sharding(gallery, offset is None and impl == "reference")
    if current is None:
        return coir_kernels.topk_excluding(query, gallery, k, exclude, offset=offset)
    return current.call("topk", gallery, {"query": query, "k": k, "exclude": exclude})


def mixed_rank_counts(parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor], gallery: torch.Tensor,
                      weights: torch.Tensor, positives: torch.Tensor, exclude: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`coir_kernels.mixed_rank_counts`, over the ranks' shards in a session."""
    coir_kernels.check_mixed(parts, gallery, weights)
    impl = coir_kernels.implementation("mixed_rank_counts", parts[0], gallery) if _session else None
    current = _sharding(gallery, impl in ("two-stage", "reference"))
    if current is None:
        return coir_kernels.mixed_rank_counts(parts, gallery, weights, positives, exclude)
    return current.call("mixed", gallery, {"parts": parts, "weights": weights, "positives": positives,
                                           "exclude": exclude, "impl": impl})
