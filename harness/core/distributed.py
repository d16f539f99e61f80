"""Multi-process helpers for launches by torchrun or the deepspeed launcher (they
set RANK / WORLD_SIZE). A plain `python` process is rank 0 of 1 and never
touches torch.distributed."""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

import torch
import torch.distributed as dist

_joined = False  # this process was in a process group (torchrun, or DeepSpeed's own init)


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
    """Leave the process group. Ranks other than 0 finish early, so on success they
    wait here for rank 0's writes. The process should then end with `exit_process`."""
    global _joined
    if dist.is_available() and dist.is_initialized():
        _joined = True
        if wait_for_all:
            dist.barrier()
        dist.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """End the process with `code`; one that was in a process group skips Python's
    finalization (os._exit, after flushing), as torch.multiprocessing's workers do.

    Why: c10d's worker threads outlive destroy_process_group while anything still
    references the group (DeepSpeed's engine does), and a gloo worker may still be
    releasing a finished collective's tensors after wait() returned in Python (with
    two worker threads, one can finish the final barrier while the other, descheduled,
    has not yet dropped the previous collective's work). Dropping a tensor that has a
    Python object takes the GIL; during finalization CPython ends such a thread with
    pthread_exit, whose forced unwinding through a noexcept C++ frame calls
    std::terminate: SIGABRT, "terminate called without an active exception", after
    the run had written its results (seen on a loaded 2-core machine, rank 1, in
    about one torchrun test in ten; native backtrace: ProcessGroupGloo::runLoop ->
    TensorImpl::decref_pyobject -> PyEval_AcquireThread -> pthread_exit). Without
    finalization no thread is unwound, and every file was written atomically already."""
    if not _joined:
        raise SystemExit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def world_size() -> int:
    """Processes in the group (1 outside one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


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
