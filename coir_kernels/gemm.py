"""Which GEMM, and which tile shape, scores on this CPU.

The score tiles of the CPU paths come from torch's GEMM (MKL or oneDNN) or, for
fp32, numpy's (OpenBLAS). Their rates differ by tens of percent, not the same way
on every CPU, and grow with the tile: a 1024 x 4096 tile can run at half the rate
of a 4096 x 16384 one (benches/scoring_suite.py measures the paths end to end).

So the plan is measured once per machine, dtype and feature width D: every
candidate tile of TILES (query rows x gallery columns, the shapes the scoring loops
then use) with every library that multiplies the dtype, keeping the highest GFLOP/s.
Plans are kept in $COIR_BENCH_CACHE/gemm_choice.json under a key naming the CPU by
vendor, family/model/stepping and instruction sets (a VM's model name, "AMD EPYC",
is the same for Zen 4 and Zen 5), the thread count and the libraries' versions.
COIR_GEMM=torch or numpy forces the fp32 library and COIR_GEMM_TILE=ROWSxCOLUMNS
the tile. Every choice gives fp32 sums of the same products: the counts do not
depend on it beyond the near-ties that any two summation orders may order
differently (coir_kernels/__init__.py).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

CHOICES = ("torch", "numpy")
# Candidate tiles, (query rows, gallery columns): 16 MB to 256 MB of fp32 scores.
TILES = ((1024, 4096), (2048, 8192), (1024, 16384), (4096, 16384))
# A problem of at most this many scores takes the first tile and torch's GEMM
# unmeasured: the probe (seconds) would cost more than any choice saves.
SMALL_PROBLEM = 4 * 1024 * 4096
# Instruction sets that change which kernels the libraries pick.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class Plan:
    library: str
    query_rows: int
    gallery_columns: int
    gflops: float  # the probe's rate (0 when forced)


def _cache_file() -> Path:
    root = Path(os.environ.get("COIR_BENCH_CACHE", Path.home() / ".cache" / "coir-bench"))
    return root / "gemm_choice.json"


def machine_key() -> str:
    """The CPU as the GEMM libraries see it: vendor, family/model/stepping, ISA, threads, versions."""
    fields: dict[str, str] = {}
    try:
        with open(CPUINFO) as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    flags = set(fields.get("flags", "").split())
    cpu = "/".join([fields.get("vendor_id", platform.machine()),
                    *(fields.get(k, "?") for k in ("cpu family", "model", "stepping"))])
    isa = "+".join(f for f in ISA_FLAGS if f in flags) or "-"
    return f"{cpu}|{isa}|threads {torch.get_num_threads()}|torch {torch.__version__}|numpy {np.__version__}"


def _gflops(fn, flops: float, repeats: int = 3) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return flops * repeats / (time.perf_counter() - started) / 1e9


def measure(dim: int, dtype: torch.dtype, tiles=TILES) -> dict[str, float]:
    """GFLOP/s of every (library, tile) this dtype can use, keyed "library RxC"."""
    gen = torch.Generator().manual_seed(0)
    rates = {}
    for rows, columns in tiles:
        a = torch.randn(rows, dim, generator=gen).to(dtype)
        b = torch.randn(columns, dim, generator=gen).to(dtype)
        out = torch.empty(rows, columns, dtype=dtype)
        flops = 2.0 * rows * columns * dim
        rates[f"torch {rows}x{columns}"] = _gflops(functools.partial(torch.matmul, a, b.T, out=out), flops)
        if dtype == torch.float32:
            rates[f"numpy {rows}x{columns}"] = _gflops(
                functools.partial(np.matmul, a.numpy(), b.numpy().T, out=out.numpy()), flops)
    return rates


def _forced() -> tuple[str | None, tuple[int, int] | None]:
    library, tile = os.environ.get("COIR_GEMM") or None, os.environ.get("COIR_GEMM_TILE") or None
    if library is not None and library not in CHOICES:
        raise ValueError(f"COIR_GEMM must be one of {', '.join(CHOICES)}, got {library!r}")
    if tile is None:
        return library, None
    try:
        rows, columns = (int(n) for n in tile.lower().split("x"))
    except ValueError:
        raise ValueError(f"COIR_GEMM_TILE must read ROWSxCOLUMNS (e.g. 2048x8192), got {tile!r}") from None
    if rows < 1 or columns < 1:
        raise ValueError(f"COIR_GEMM_TILE needs positive sizes, got {tile!r}")
    return library, (rows, columns)


@functools.cache
def plan(dim: int, dtype: torch.dtype = torch.float32) -> Plan:
    """The library and tile to score (Q, dim) x (G, dim) in `dtype` with on this CPU."""
    library, tile = _forced()
    if dtype != torch.float32:
        library = "torch"  # numpy has no bf16 / fp16 GEMM
    if library is not None and tile is not None:
        return Plan(library, *tile, 0.0)
    rates = _known_rates(dim, dtype)
    allowed = {k: v for k, v in rates.items()
               if (library is None or k.split()[0] == library)
               and (tile is None or k.split()[1] == f"{tile[0]}x{tile[1]}")}
    best = max(allowed or rates, key=(allowed or rates).get)
    name, shape = best.split()
    rows, columns = tile or tuple(int(n) for n in shape.split("x"))
    return Plan(library or name, rows, columns, rates[best])


def _known_rates(dim: int, dtype: torch.dtype) -> dict[str, float]:
    """The probe's rates for this machine, dtype and D: from the cache file, else measured and kept."""
    path, key = _cache_file(), f"{machine_key()}|{str(dtype).removeprefix('torch.')}|D {dim}"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    entry = known.get(key)
    if not isinstance(entry, dict) or not isinstance(entry.get("gflops"), dict):
        entry = known[key] = {"gflops": measure(dim, dtype)}  # every candidate: a forced one filters them
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(known, indent=2))
            os.replace(tmp, path)  # a reader never sees half a file
        except OSError:
            pass  # a read-only cache: measured again next time
    return entry["gflops"]


def plan_for(queries: int, items: int, dim: int, dtype: torch.dtype = torch.float32) -> Plan:
    """`plan(dim, dtype)` for a (queries x items) problem; a small one's fixed plan, unmeasured."""
    if queries * items <= SMALL_PROBLEM and not any(_forced()):
        return Plan("torch", *TILES[0], 0.0)
    return plan(dim, dtype)


def describe(queries: int, items: int, dim: int, dtype: torch.dtype = torch.float32) -> dict:
    """`plan_for`'s plan as results record it, with the machine key it was measured under."""
    return {**asdict(plan_for(queries, items, dim, dtype)), "machine": machine_key()}


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


def scores(query: torch.Tensor, gallery_block: torch.Tensor, buffer: TileBuffer | None = None,
           library: str | None = None) -> torch.Tensor:
    """query (R, D) @ gallery_block (C, D).T on CPU tensors by `library`'s GEMM (default:
    the plan for an (R x C) problem; low-precision inputs always through torch, with
    fp32 sums), into `buffer`'s memory if given (valid until the next call with it)."""
    if query.is_cuda:
        return query @ gallery_block.T
    out = buffer.get(query.shape[0], gallery_block.shape[0], query) if buffer else \
        torch.empty(query.shape[0], gallery_block.shape[0], dtype=query.dtype)
    library = library or plan_for(query.shape[0], gallery_block.shape[0], query.shape[-1]).library
    if query.dtype != torch.float32 or library == "torch":
        return torch.matmul(query, gallery_block.T, out=out)
    np.matmul(query.detach().numpy(), gallery_block.detach().numpy().T, out=out.numpy())
    return out
