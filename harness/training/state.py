"""Resumable training state, written atomically: the engine (weights and
optimizer; a DeepSpeed engine writes one ZeRO partition per rank), every rank's
RNG state, and the loop's progress (global step, the batch-order generator's
state at the start of the current epoch, losses so far, elapsed time).

A run killed at any point resumes from the last complete state and, on the same
machine and world size, reaches the same weights as an uninterrupted run: the
epoch's permutation is redrawn from the saved generator state and the steps
already taken are skipped.

Layout: <checkpoint>.train-state/{progress.pt, rng-<rank>.pt, engine files}.
Written into a sibling `.tmp` folder, then renamed into place (the old one
removed after), so a reader never sees a half-written state.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist


@dataclass
class Progress:
    step: int = 0  # optimizer steps done
    epoch_order_state: torch.Tensor | None = None  # order generator at the current epoch's start
    step_losses: list[float] = field(default_factory=list)
    loss_curve: list[float] = field(default_factory=list)
    seconds: float = 0.0
    peak_graph_bytes: int = 0


def state_dir(checkpoint_dir: Path) -> Path:
    return checkpoint_dir.with_name(checkpoint_dir.name + ".train-state")


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _rng(device: torch.device) -> dict:
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def save(directory: Path, engine, progress: Progress, device: torch.device) -> None:
    """Collective: every rank calls it at the same step."""
    rank = _rank()
    tmp = directory.with_name(directory.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    engine.save(tmp, rank)
    torch.save(_rng(device), tmp / f"rng-{rank}.pt")
    _barrier()
    if rank == 0:
        torch.save(asdict(progress), tmp / "progress.pt")
        replace_dir(tmp, directory)
    _barrier()


def load(directory: Path, engine, device: torch.device) -> Progress | None:
    if not (directory / "progress.pt").is_file():
        # A kill between the two renames of replace_dir leaves only the previous state.
        directory = directory.with_name(directory.name + ".old")
        if not (directory / "progress.pt").is_file():
            return None
    engine.load(directory)
    rng = torch.load(directory / f"rng-{_rank()}.pt", weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if rng["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)
    return Progress(**torch.load(directory / "progress.pt", weights_only=True))


def replace_dir(tmp: Path, directory: Path) -> None:
    """Rename tmp onto directory; the previous version is moved aside, then deleted."""
    if directory.exists():
        old = directory.with_name(directory.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        directory.rename(old)
        tmp.rename(directory)
        shutil.rmtree(old)
    else:
        tmp.rename(directory)


def remove(directory: Path) -> None:
    if _rank() == 0:
        shutil.rmtree(directory, ignore_errors=True)
    _barrier()
