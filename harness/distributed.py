"""Multi-process helpers for launches by torchrun or the deepspeed launcher (they
set RANK / WORLD_SIZE). A plain `python` process is rank 0 of 1 and never
touches torch.distributed."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> None:
    """Join the process group once (gloo on CPU, nccl on CUDA)."""
    if launched_by_torchrun() and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)


def device_for_rank(device: torch.device) -> torch.device:
    """One GPU per process (LOCAL_RANK), as torchrun lays them out."""
    if device.type != "cuda":
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def finish(wait_for_all: bool) -> None:
    """Leave the process group cleanly: a rank that exits with gloo's threads still
    running aborts ("terminate called without an active exception"). Ranks other
    than 0 finish early, so on success they wait here for rank 0's writes."""
    if dist.is_available() and dist.is_initialized():
        if wait_for_all:
            dist.barrier()
        dist.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_and_world()[0] == 0


def broadcast_from_rank0(obj):
    """Rank 0's obj on every rank, so all ranks take the same branch."""
    if rank_and_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_to_rank0(obj):
    """[obj of every rank] on rank 0, None elsewhere; [obj] in a single process."""
    rank, world = rank_and_world()
    if world == 1:
        return [obj]
    out = [None] * world if rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out
