"""Which GEMM, and which tile shape, scores on this CPU.

The score tiles of the CPU paths come from torch's GEMM (MKL or oneDNN) or, for
fp32, numpy's (OpenBLAS) or, on CPUs with AVX-512, a second OpenBLAS running its
AVX-512 kernels (`coir_kernels/openblas_avx512.py`: numpy's may not pick them on a
CPU newer than its table). Their rates differ by tens of percent, not the same way
on every CPU, and grow with the tile: a 1024 x 4096 tile can run at half the rate
of a 4096 x 16384 one (benches/scoring_suite.py measures the paths end to end).

So the plan is measured once per machine, dtype and feature width D: every
candidate tile of TILES (query rows x gallery columns, the shapes the scoring loops
then use) with every library that multiplies the dtype, keeping the highest GFLOP/s.
Plans are kept in $COIR_BENCH_CACHE/gemm_choice.json under a key naming the CPU by
vendor, family/model/stepping and instruction sets (a VM's model name, "AMD EPYC",
is the same for Zen 4 and Zen 5), the thread count and the libraries' versions.
COIR_GEMM=torch, numpy or openblas-avx512 forces the fp32 library and COIR_GEMM_TILE=ROWSxCOLUMNS
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

from coir_kernels import openblas_avx512

CHOICES = ("torch", "numpy", "openblas-avx512")
# Candidate tiles, (query rows, gallery columns): 16 MB to 256 MB of fp32 scores.
TILES = ((1024, 4096), (2048, 8192), (1024, 16384), (4096, 16384))
# A problem of at most this many scores takes the first tile and torch's GEMM
# unmeasured: the probe (seconds) would cost more than any choice saves.
SMALL_PROBLEM = 4 * 1024 * 4096
# Seconds each library multiplies before its rates are taken (`measure`).
SETTLE_SECONDS = 0.3
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


def _cpu_fields() -> dict[str, str]:
    """The first processor's lines of /proc/cpuinfo (none where it cannot be read)."""
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
    return fields


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's instruction-set flags (read once: every GEMM call of a library needing them asks)."""
    return frozenset(_cpu_fields().get("flags", "").split())


def machine_key() -> str:
    """The CPU as the GEMM libraries see it: vendor, family/model/stepping, ISA, threads, versions."""
    fields = _cpu_fields()
    flags = set(fields.get("flags", "").split())
    cpu = "/".join([fields.get("vendor_id", platform.machine()),
                    *(fields.get(k, "?") for k in ("cpu family", "model", "stepping"))])
    isa = "+".join(f for f in ISA_FLAGS if f in flags) or "-"
    return (f"{cpu}|{isa}|threads {torch.get_num_threads()}|torch {torch.__version__}|numpy {np.__version__}"
            f"|{openblas_avx512.PACKAGE} {openblas_avx512.version()}")


def _gflops(fn, flops: float, repeats: int = 3) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return flops * repeats / (time.perf_counter() - started) / 1e9


def libraries(dtype: torch.dtype) -> tuple[str, ...]:
    """The libraries that multiply `dtype` in this process (numpy and OpenBLAS: fp32 only)."""
    if dtype != torch.float32:
        return ("torch",)
    avx512 = openblas_avx512.available(cpu_flags())
    return tuple(c for c in CHOICES if c != "openblas-avx512" or avx512)


def measure(dim: int, dtype: torch.dtype, tiles=TILES) -> dict[str, float]:
    """GFLOP/s of every (library, tile) this dtype can use, keyed "library RxC".

    One library at a time, each first multiplying for SETTLE_SECONDS: an OpenBLAS's
    threads spin for a while after its last call (THREAD_TIMEOUT), on the cores the
    next library's threads need, and its own threads start at its first call."""
    gen = torch.Generator().manual_seed(0)
    operands = [(torch.randn(rows, dim, generator=gen).to(dtype), torch.randn(columns, dim, generator=gen).to(dtype))
                for rows, columns in tiles]
    rates = {}
    for library in libraries(dtype):
        a, b = operands[0]
        out = torch.empty(a.shape[0], b.shape[0], dtype=dtype)
        settle = time.perf_counter() + SETTLE_SECONDS
        while time.perf_counter() < settle:
            _multiply(out, a, b, library)
        for (rows, columns), (a, b) in zip(tiles, operands):
            out = torch.empty(rows, columns, dtype=dtype)
            rates[f"{library} {rows}x{columns}"] = _gflops(
                functools.partial(_multiply, out, a, b, library), 2.0 * rows * columns * dim)
    return rates


def _forced() -> tuple[str | None, tuple[int, int] | None]:
    library, tile = os.environ.get("COIR_GEMM") or None, os.environ.get("COIR_GEMM_TILE") or None
    if library is not None and library not in CHOICES:
        raise ValueError(f"COIR_GEMM must be one of {', '.join(CHOICES)}, got {library!r}")
    if library == "openblas-avx512":
        try:
            openblas_avx512.load(cpu_flags())
        except openblas_avx512.Unavailable as err:
            raise ValueError(f"COIR_GEMM=openblas-avx512 cannot run here: {err}; "
                             "use torch or numpy") from None
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
    probed = {name.split()[0] for name in entry["gflops"]} if isinstance(entry, dict) \
        and isinstance(entry.get("gflops"), dict) else set()
    if not set(libraries(dtype)) <= probed:  # none yet, or a library this process adds
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


def _multiply(out: torch.Tensor, query: torch.Tensor, gallery_block: torch.Tensor, library: str
              ) -> torch.Tensor:
    if query.dtype != torch.float32 or library == "torch":
        return torch.matmul(query, gallery_block.T, out=out)
    if library == "openblas-avx512":
        return openblas_avx512.scores_into(out, query, gallery_block, cpu_flags())
    np.matmul(query.detach().numpy(), gallery_block.detach().numpy().T, out=out.numpy())
    return out


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
    return _multiply(out, query, gallery_block, library)
