"""Retrieval at CIRR size (4,181 queries x 2,297 gallery, D=256): the reference rank
count and top-50 against torch matmul+topk and faiss-cpu IndexFlatIP.

    pytest benches --benchmark-only

Derived units in extra_info: queries/s = Q / t, effective GFLOP/s = 2*Q*G*D / t.
faiss runs in a subprocess-free way here; its OpenMP pool and torch's can fight
in one process, so compare its numbers with COIR_BENCH_THREADS=1 as well.
"""

from __future__ import annotations

import pytest
import torch

from kernels import reference

Q, G, D, K = 4181, 2297, 256, 50


def setup_cirr_size(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    query = torch.nn.functional.normalize(torch.randn(Q, D, generator=g), dim=-1)
    gallery = torch.nn.functional.normalize(torch.randn(G, D, generator=g), dim=-1)
    exclude = torch.randint(0, G, (Q,), generator=g)
    target = (exclude + 1) % G
    return query, gallery, exclude, target


def record(benchmark, provider: str):
    benchmark.extra_info.update(
        provider=provider, device="cpu", dtype="fp32", shape=f"{Q}x{G}x{D}", k=K,
        threads=torch.get_num_threads(),
    )


def derived_units(benchmark):
    seconds = benchmark.stats.stats.mean
    benchmark.extra_info["queries_per_s"] = Q / seconds
    benchmark.extra_info["gflop_per_s"] = 2 * Q * G * D / seconds / 1e9


@pytest.mark.parametrize("provider", ["reference-rank", "reference-topk", "torch-mm-topk", "faiss"])
def bench_cirr_size(benchmark, provider):
    query, gallery, exclude, target = setup_cirr_size()
    record(benchmark, provider)
    if provider == "reference-rank":
        benchmark(reference.target_rank_counts, query, gallery, target[:, None], exclude)
    elif provider == "reference-topk":
        benchmark(reference.topk_excluding, query, gallery, K, exclude)
    elif provider == "torch-mm-topk":
        benchmark(lambda: torch.topk(query @ gallery.T, K + 1, dim=1))
    else:
        faiss = pytest.importorskip("faiss")
        index = faiss.IndexFlatIP(D)
        index.add(gallery.numpy())
        q = query.numpy()
        benchmark(index.search, q, K + 1)  # K+1, then the reference is dropped
    derived_units(benchmark)
