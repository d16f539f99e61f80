"""Machine limits for the roofline fraction of a scoring run, with their source.

T_min = max(2 Q G D / P_peak, bytes / BW): the time the arithmetic alone or the
unavoidable memory traffic alone would take. `bytes` counts what a fused kernel
must move: the queries and the gallery read once, the outputs written once; a
peer that writes the Q x G score matrix out moves more, and that is the point.
"""

from __future__ import annotations

import torch

# name: (peak FLOP/s for the dtype used, memory bandwidth B/s, source)
MACHINES = {
    "cpu": (200e9, 37e9, "ENVIRONMENT.md: torch fp32 matmul 190-200 GFLOP/s on 2 threads, 37 GB/s read"),
    "H100": (790e12, 3.0e12, "ENVIRONMENT.md: bf16 matmul ~790 TFLOP/s, ~3.0 TB/s device copy"),
    "H200": (790e12, 4.3e12, "ENVIRONMENT.md: same SM as H100, ~4.3 TB/s device copy"),
}


def machine_key(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device)
    return "H200" if "H200" in name else "H100"


def measured_cpu_peak(dtype: torch.dtype) -> float:
    """FLOP/s of this CPU's fastest GEMM for `dtype` on the current threads: a
    4096 x 16384 x 256 product, best of five per library coir_kernels/gemm.py can use
    for `dtype` (fp32: torch's, numpy's, the AVX-512 OpenBLAS; bf16: torch's oneDNN)."""
    import time

    from coir_kernels import gemm

    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(4096, 256, generator=gen).to(dtype), torch.randn(16384, 256, generator=gen).to(dtype)
    buffer = gemm.TileBuffer()  # a fresh 256 MB output per call would time page faults
    best = float("inf")
    for library in gemm.libraries(dtype):
        gemm.scores(a, b, buffer, library)
        for _ in range(5):
            started = time.perf_counter()
            gemm.scores(a, b, buffer, library)
            best = min(best, time.perf_counter() - started)
    return 2.0 * 4096 * 16384 * 256 / best


def t_min(queries: int, gallery: int, dim: int, element_bytes: int, output_bytes: int,
          machine: str, s_tok: int = 1, t_tok: int = 1, parts: int = 1, peak: float | None = None,
          peak_source: str | None = None) -> dict:
    """The roofline floor of one scoring problem, in seconds, and its two terms.
    s_tok x t_tok token pairs for max-sim; `parts` = 3 for mixed queries (three
    score blocks, whatever the number of weight triples); `peak` replaces the
    machine's stated FLOP/s (a measured one, `measured_cpu_peak`)."""
    stated, bandwidth, source = MACHINES[machine]
    if peak is None:
        peak = stated
    else:
        source = f"{peak_source}; {source.split(',')[-1].strip()}"
    flops = 2.0 * queries * gallery * dim * s_tok * t_tok * parts
    moved = (parts * queries * s_tok + gallery * t_tok) * dim * element_bytes + output_bytes
    compute_s, memory_s = flops / peak, moved / bandwidth
    return {"t_min_s": max(compute_s, memory_s), "compute_s": compute_s, "memory_s": memory_s,
            "flops": flops, "bytes": moved, "machine": machine, "limits_source": source}
