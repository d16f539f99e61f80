"""The fp32 score tiles of the CPU reference come from whichever GEMM is faster on
this machine: torch's (MKL or oneDNN) or numpy's (OpenBLAS). They differ by tens of
percent, and not the same way on every CPU (on an AMD EPYC Zen 5 with torch's MKL,
numpy's OpenBLAS was the faster; benches/scoring_suite.py measures both paths).

The choice is measured once per machine, on the tile shape the reference uses, and
kept in $COIR_BENCH_CACHE/gemm_choice.json under a key naming the CPU, the thread
count and both libraries' versions; COIR_GEMM=torch or numpy forces one. Both give
fp32 products of fp32 inputs: the counts do not depend on the choice beyond the
near-ties that any two summation orders may order differently (coir_kernels/__init__.py).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

CHOICES = ("torch", "numpy")
PROBE = (1024, 4096, 256)  # the reference's tile: query rows x gallery columns x D


def _cache_file() -> Path:
    root = Path(os.environ.get("COIR_BENCH_CACHE", Path.home() / ".cache" / "coir-bench"))
    return root / "gemm_choice.json"


def _machine_key() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}|threads {torch.get_num_threads()}|torch {torch.__version__}|numpy {np.__version__}"


def _time(fn, repeats: int = 5) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


def measure() -> dict[str, float]:
    """Seconds per probe tile of each GEMM."""
    rows, columns, dim = PROBE
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(rows, dim, generator=gen), torch.randn(columns, dim, generator=gen)
    out = np.empty((rows, columns), dtype=np.float32)
    return {"torch": _time(lambda: a @ b.T), "numpy": _time(lambda: np.matmul(a.numpy(), b.numpy().T, out=out))}


@functools.cache
def choice() -> str:
    forced = os.environ.get("COIR_GEMM")
    if forced:
        if forced not in CHOICES:
            raise ValueError(f"COIR_GEMM must be one of {', '.join(CHOICES)}, got {forced!r}")
        return forced
    path, key = _cache_file(), _machine_key()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        seconds = measure()
        known[key] = {"choice": min(seconds, key=seconds.get), "seconds": seconds}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(known, indent=2))
            os.replace(tmp, path)  # a reader never sees half a file
        except OSError:
            pass  # a read-only cache: measured again next time
    return known[key]["choice"]


class TileBuffer:
    """One output buffer reused by every tile of a scoring call: a fresh tile of
    16-32 MB per product costs page faults that halve the GEMM's rate on CPU."""

    def __init__(self):
        self.buffer: torch.Tensor | None = None

    def get(self, rows: int, columns: int, like: torch.Tensor) -> torch.Tensor:
        b = self.buffer
        if b is None or b.shape != (rows, columns) or b.dtype != like.dtype or b.device != like.device:
            if b is not None and b.shape[0] >= rows and b.shape[1] == columns and b.dtype == like.dtype \
                    and b.device == like.device:
                return b[:rows]  # a shorter last chunk: the first rows, still contiguous
            self.buffer = b = torch.empty(rows, columns, dtype=like.dtype, device=like.device)
        return b


def scores(query: torch.Tensor, gallery_block: torch.Tensor, buffer: TileBuffer | None = None) -> torch.Tensor:
    """query (R, D) @ gallery_block (C, D).T in fp32, by the faster GEMM on CPU tensors,
    into `buffer`'s memory if given (valid until the next call with it)."""
    if query.is_cuda:
        return query @ gallery_block.T
    out = buffer.get(query.shape[0], gallery_block.shape[0], query) if buffer else \
        torch.empty(query.shape[0], gallery_block.shape[0], dtype=query.dtype)
    if choice() == "torch" or query.dtype != torch.float32:
        return torch.matmul(query, gallery_block.T, out=out)
    np.matmul(query.detach().numpy(), gallery_block.detach().numpy().T, out=out.numpy())
    return out
