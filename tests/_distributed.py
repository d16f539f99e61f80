"""Run a function on N gloo ranks (CPU) inside a test: torch.multiprocessing
spawns the workers, each joins a process group on a free port and writes what it
returns into a file the test reads back."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, fn, out: str, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save(fn(rank, world, *args), Path(out) / f"rank{rank}.pt")
    finally:
        dist.barrier()
        dist.destroy_process_group()


def run_on_ranks(fn, world: int, tmp_path: Path, *args) -> list:
    """fn(rank, world, *args) on `world` ranks; its return values, in rank order."""
    mp.spawn(_worker, args=(world, _free_port(), fn, str(tmp_path), args), nprocs=world, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
