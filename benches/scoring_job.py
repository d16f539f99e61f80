"""One scoring measurement in this process, printed as one JSON line.

    python -m benches.scoring_job --provider reference-rank --queries 10000 --gallery 1000000

Each provider runs in a process of its own (benches/scoring_suite.py starts them):
faiss's and torch's OpenMP pools fight when both live in one process.

The problem is seeded and has a findable answer: each query is its target
gallery item plus noise (so Recall@K is neither 0 nor 100), and each query
excludes another gallery item, as CIRR removes the reference image. Every
provider reports Recall@{1,5,10,50} of the target, so providers can be checked
for identical answers, beside the time of the scoring call alone (data made and,
for the compiled CPU counting, one warm-up call on a small problem done first).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import time
from pathlib import Path

import torch

from benches.roofline import machine_key, measured_cpu_peak, t_min
from coir_kernels import counting, gemm, openblas_avx512

KS = (1, 5, 10, 50)
PROVIDERS = ("reference-rank", "two-stage-rank", "triton-rank", "torch-mm-topk", "faiss", "faiss-avx512", "triton-topk",
             "reference-sweep", "two-stage-sweep", "recompute-sweep", "triton-sweep")


def make_problem(queries: int, gallery: int, dim: int, seed: int, device: str, dtype: torch.dtype,
                 noise: float, tokens: int = 0):
    """Unit gallery rows (G, D) or (G, T, D); queries = target + noise, unit norm.
    Generated on the device itself: a 10M-row gallery made on the CPU takes minutes."""
    gen = torch.Generator(device=device).manual_seed(seed)
    shape = (gallery, tokens, dim) if tokens else (gallery, dim)
    g = torch.empty(shape, dtype=dtype, device=device)
    step = 1 << 18
    for start in range(0, gallery, step):  # in slices: fp32 randn of the whole gallery doubles peak memory
        part = torch.randn(g[start : start + step].shape, generator=gen, device=device)
        g[start : start + step] = torch.nn.functional.normalize(part, dim=-1).to(dtype)
    target = torch.randint(0, gallery, (queries,), generator=gen, device=device)
    exclude = (target + 1 + torch.randint(0, gallery - 1, (queries,), generator=gen, device=device)) % gallery
    q = g[target].float() + noise * torch.randn(g[target].shape, generator=gen, device=device) / dim**0.5
    return torch.nn.functional.normalize(q, dim=-1).to(dtype), g, target, exclude


def percent(hits: torch.Tensor) -> float:
    """100 x hits / queries from the exact count, in float64 (as harness.evaluation.metrics)."""
    return 100.0 * int(hits.sum()) / hits.numel()


def recall_from_ranks(greater: torch.Tensor) -> dict:
    return {f"R@{k}": percent(greater < k) for k in KS}


def recall_from_topk(indices: torch.Tensor, target: torch.Tensor, exclude: torch.Tensor) -> dict:
    """indices (Q, K+1) best first, possibly holding the excluded item: drop it, keep K."""
    keep = indices != exclude[:, None]
    ranked = torch.where(keep, indices, -1)
    position = torch.full((indices.shape[0],), 10**9, device=indices.device)
    order = keep.long().cumsum(1) - 1  # position among the kept
    hit = (ranked == target[:, None]) & keep
    position = torch.where(hit.any(1), (order * hit).sum(1), position)
    return {f"R@{k}": percent(position < k) for k in KS}


def simplex(step_count: int) -> torch.Tensor:
    """Weight triples (a, b, n-a-b)/n: (n+1)(n+2)/2 of them (n=20: 231)."""
    n = step_count
    return torch.tensor([(a / n, b / n, (n - a - b) / n) for a in range(n + 1) for b in range(n + 1 - a)])


def sweep_weights(count: int) -> torch.Tensor:
    if count == 1:
        return torch.tensor([[0.1, 0.1, 0.8]])
    for n in range(1, 64):
        if (n + 1) * (n + 2) // 2 == count:
            return simplex(n)
    raise SystemExit(f"--triples {count} is not a simplex grid size (1, 66, 231, ...)")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def force_faiss_avx512() -> None:
    """faiss-cpu with its own OpenBLAS on its AVX-512 kernels: the peer given the kernels our
    fp32 path can take (coir_kernels/openblas_avx512.py). OpenBLAS reads OPENBLAS_CORETYPE
    once, when it loads: at `import faiss`, which no job has done before this call."""
    missing = openblas_avx512.missing_flags(gemm.cpu_flags())
    if missing:
        raise SystemExit(f"faiss-avx512 needs a CPU with AVX-512; this one lacks {', '.join(missing)}")
    if "faiss" in sys.modules:
        raise SystemExit("faiss-avx512: faiss was imported before its kernels could be chosen")
    os.environ["OPENBLAS_CORETYPE"] = openblas_avx512.FORCED_CORE


def faiss_blas_core() -> str | None:
    """The kernels faiss-cpu's own OpenBLAS loaded ("Haswell", "SkylakeX", ...), None if
    that library is not found: which GEMM the faiss rows measured."""
    import faiss

    folder = Path(faiss.__file__).resolve().parent.parent / "faiss_cpu.libs"
    libraries = sorted(folder.glob("libopenblas*.so*"))
    if not libraries:
        return None
    library = ctypes.CDLL(str(libraries[0]))  # already loaded by faiss: the same handle
    library.openblas_get_corename.restype = ctypes.c_char_p
    return library.openblas_get_corename().decode()


def provider_call(args, q, g, target, exclude, parts, weights):
    """The scoring call of args.provider on this problem: a function returning the
    Recall@K of the target, computed from that provider's own output."""
    import coir_kernels
    from coir_kernels import reference

    p, k, dtype = args.provider, args.k, q.dtype
    positives = target[:, None]
    if p == "reference-rank":
        return lambda: recall_from_ranks(reference.target_rank_counts(q, g, positives, exclude)[0][:, 0])
    if p == "two-stage-rank":  # bf16 (CPU) or fp16 (CUDA) scores, fp32 rescoring in the band
        return lambda: recall_from_ranks(
            coir_kernels.target_rank_counts(q, g, positives, exclude, impl="two-stage")[0][:, 0])
    if p == "triton-rank":
        return lambda: recall_from_ranks(
            coir_kernels.target_rank_counts(q, g, positives, exclude, impl="triton")[0][:, 0])
    if p == "triton-topk":
        return lambda: recall_from_topk(coir_kernels.topk_excluding(q, g, k, exclude, impl="triton")[1], target, exclude)
    if p == "torch-mm-topk":
        # chunked: a 10k x 1M fp32 score matrix is 40 GB; at most 2**32 bytes of scores at once
        rows = args.chunk or max(1, (1 << 32) // (g.shape[0] * q.element_size()))
        return lambda: recall_from_topk(torch.cat([
            torch.topk(q[start : start + rows] @ g.T, k + 1, dim=1).indices
            for start in range(0, q.shape[0], rows)]), target, exclude)
    if p in ("faiss", "faiss-avx512"):
        if p == "faiss-avx512":
            force_faiss_avx512()
        import faiss

        def search():
            index = faiss.IndexFlatIP(g.shape[-1])
            index.add(g.float().cpu().numpy())
            _, idx = index.search(q.float().cpu().numpy(), k + 1)
            return recall_from_topk(torch.from_numpy(idx), target.cpu(), exclude.cpu())

        return search
    if p in ("reference-sweep", "two-stage-sweep", "triton-sweep"):
        impl = p.removesuffix("-sweep")
        return lambda: recall_from_ranks(
            coir_kernels.mixed_rank_counts(parts, g, weights, positives, exclude, impl=impl)[0][-1, :, 0])
    if p == "recompute-sweep":
        def recompute():  # what a sweep costs without the three-accumulator trick
            unit = [torch.nn.functional.normalize(x.float(), dim=-1) for x in parts]
            for w in weights:
                mixed = torch.nn.functional.normalize(w[0] * unit[0] + w[1] * unit[1] + w[2] * unit[2], dim=-1)
                greater = coir_kernels.target_rank_counts(mixed.to(dtype), g, positives, exclude)[0]
            return recall_from_ranks(greater[:, 0])

        return recompute
    raise SystemExit(f"unknown provider {p!r}; choose from {', '.join(PROVIDERS)}")


class Job:
    """One provider on one seeded problem, ready to be timed: the data made, and for
    every torch provider the counting loops or kernels compiled by a first call on a
    64-query slice (not timed; the recompute baseline counts through them too)."""

    def __init__(self, args):
        self.args = args
        device, dtype = args.device, {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
        self.sweep = args.provider.endswith("sweep")
        q, g, target, exclude = make_problem(args.queries, args.gallery, args.dim, args.seed, device, dtype,
                                             args.noise, args.tokens)
        parts = weights = None
        if self.sweep:  # the parts of a mixed query: q (image), t (text), f (composed) = noisy copies
            gen = torch.Generator(device=device).manual_seed(args.seed + 1)
            parts = tuple(torch.nn.functional.normalize(
                q.float() + 0.5 * torch.randn(q.shape, generator=gen, device=device) / args.dim**0.5, dim=-1
            ).to(dtype) for _ in range(3))
            weights = sweep_weights(args.triples).to(device)
        self.query, self.gallery = q, g
        self.gemm = None
        if device == "cpu" and args.provider.startswith(("reference", "two-stage")):
            # the GEMM plan's probe (once per machine) runs here, not in a timed call
            low = torch.bfloat16 if args.provider.startswith("two-stage") else torch.float32
            self.gemm = gemm.describe(args.queries, args.gallery, args.dim, low)
        self.call = provider_call(args, q, g, target, exclude, parts, weights)
        self.warmup_seconds = 0.0
        counting.compile_from_now()  # the warm-up compiles the counting loops, as it did before the eager start
        if not args.provider.startswith("faiss"):
            # rows enough for the timed call's GEMM plan (a small problem takes torch's), so the
            # warm-up compiles the counting that plan uses (counting.on_one_thread for OpenBLAS's)
            n = min(args.queries, max(64, gemm.SMALL_PROBLEM // args.gallery + 1))
            warm = provider_call(args, q[:n], g, target[:n], exclude[:n],
                                 parts and tuple(x[:n] for x in parts), weights)
            self.warmup_seconds, _ = self.timed(warm)

    def timed(self, fn=None) -> tuple[float, dict]:
        """(seconds, recall) of one call, the device synchronised around it."""
        sync(self.args.device)
        start = time.perf_counter()
        recall = (fn or self.call)()
        sync(self.args.device)
        return time.perf_counter() - start, recall

    def describe(self, times: list[float], recall: dict) -> dict:
        args, q, g = self.args, self.query, self.gallery
        seconds = min(times)
        s_tok = args.tokens if q.ndim == 3 else 1
        t_tok = args.tokens if g.ndim == 3 else 1
        element = q.element_size()
        triples = args.triples if self.sweep else 1
        output = args.queries * (triples * 16 if "rank" in args.provider or self.sweep else (args.k + 1) * 12)
        machine = machine_key(torch.device(args.device))
        peak = source = None
        if machine == "cpu":  # the CPU's own measured GEMM rate for the format the provider multiplies in
            low = args.provider.startswith("two-stage")
            peak = measured_cpu_peak(torch.bfloat16 if low else torch.float32)
            source = f"measured {'bf16' if low else 'fp32'} GEMM {peak / 1e9:.0f} GFLOP/s (benches/roofline.py)"
        floor = t_min(args.queries, args.gallery, args.dim, element, output, machine,
                      s_tok, t_tok, 3 if self.sweep and args.provider != "recompute-sweep" else 1, peak, source)
        flops = floor["flops"] * (triples if args.provider == "recompute-sweep" else 1)
        return {
            "provider": args.provider, "device": args.device,
            "device_name": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
            "dtype": args.dtype, "queries": args.queries, "gallery": args.gallery, "dim": args.dim,
            "tokens": args.tokens, "k": args.k, "triples": triples, "threads": torch.get_num_threads(),
            "seconds": seconds, "all_seconds": times, "warmup_seconds": self.warmup_seconds,
            "queries_per_s": args.queries / seconds,
            "effective_tflop_per_s": flops / seconds / 1e12,
            "effective_gb_per_s": floor["bytes"] / seconds / 1e9,
            "roofline": floor, "roofline_fraction": floor["t_min_s"] / seconds,
            "recall": recall,
            **({"gemm": self.gemm} if self.gemm else {}),
            **({"blas_core": faiss_blas_core()} if args.provider.startswith("faiss") else {}),
        }


def run(args) -> dict:
    """args.repeat timed calls; the best is the row's time."""
    job = Job(args)
    measured = [job.timed() for _ in range(args.repeat)]
    return job.describe([seconds for seconds, _ in measured], measured[-1][1])


def serve(args) -> None:
    """A job that stays up: one JSON line when ready, then for each line read on
    stdin one timed call and one JSON line (its seconds and recall), until stdin
    closes. A bench in another process then times the same call as in-process ones
    (the pipe costs microseconds), without this process's start-up."""
    job = Job(args)
    print(json.dumps({"ready": True, "warmup_seconds": job.warmup_seconds}), flush=True)
    times = []
    for _ in sys.stdin:
        seconds, recall = job.timed()
        times.append(seconds)
        print(json.dumps(job.describe(times, recall) | {"last_seconds": seconds}), flush=True)


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benches.scoring_job", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--provider", required=True, choices=PROVIDERS)
    parser.add_argument("--queries", type=int, default=4181)
    parser.add_argument("--gallery", type=int, default=2297)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=0, help="max-sim: tokens per query and item (BLIP-2: 32)")
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--triples", type=int, default=231, help="weight triples of a sweep (1, 66, 231)")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("COIR_BENCH_THREADS", 2)))
    parser.add_argument("--chunk", type=int, default=0,
                        help="query rows per torch matmul (default: 4 GB of scores at once)")
    parser.add_argument("--noise", type=float, default=3.0, help="query noise: sets how hard the targets are")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve", action="store_true",
                        help="stay up: one timed call per line read on stdin, one JSON line each")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    if args.serve:
        serve(args)
    else:
        print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
