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
import json
import os
import time

import torch

from benches.roofline import machine_key, t_min

KS = (1, 5, 10, 50)
PROVIDERS = ("reference-rank", "triton-rank", "torch-mm-topk", "faiss", "triton-topk", "reference-sweep",
             "recompute-sweep", "triton-sweep")


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


def recall_from_ranks(greater: torch.Tensor) -> dict:
    return {f"R@{k}": 100.0 * (greater < k).float().mean().item() for k in KS}


def recall_from_topk(indices: torch.Tensor, target: torch.Tensor, exclude: torch.Tensor) -> dict:
    """indices (Q, K+1) best first, possibly holding the excluded item: drop it, keep K."""
    keep = indices != exclude[:, None]
    ranked = torch.where(keep, indices, -1)
    position = torch.full((indices.shape[0],), 10**9, device=indices.device)
    order = keep.long().cumsum(1) - 1  # position among the kept
    hit = (ranked == target[:, None]) & keep
    position = torch.where(hit.any(1), (order * hit).sum(1), position)
    return {f"R@{k}": 100.0 * (position < k).float().mean().item() for k in KS}


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


def run(args) -> dict:
    import kernels
    from kernels import reference

    device = args.device
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    tokens = args.tokens
    q, g, target, exclude = make_problem(args.queries, args.gallery, args.dim, args.seed, device, dtype,
                                         args.noise, tokens)
    k = args.k
    sweep = args.provider.endswith("sweep")
    if sweep:  # the parts of a mixed query: q (image), t (text), f (composed) = noisy copies
        gen = torch.Generator(device=device).manual_seed(args.seed + 1)
        parts = tuple(torch.nn.functional.normalize(
            q.float() + 0.5 * torch.randn(q.shape, generator=gen, device=device) / args.dim**0.5, dim=-1
        ).to(dtype) for _ in range(3))
        weights = sweep_weights(args.triples).to(device)
    positives = target[:, None]

    def call():
        p = args.provider
        if p == "reference-rank":
            return recall_from_ranks(reference.target_rank_counts(q, g, positives, exclude)[0][:, 0])
        if p == "triton-rank":
            return recall_from_ranks(kernels.target_rank_counts(q, g, positives, exclude, impl="triton")[0][:, 0])
        if p == "triton-topk":
            _, idx = kernels.topk_excluding(q, g, k, exclude, impl="triton")
            return recall_from_topk(idx, target, exclude)
        if p == "torch-mm-topk":
            out = []
            # chunked: a 10k x 1M fp32 score matrix is 40 GB; at most 2**32 bytes of scores at once
            rows = args.chunk or max(1, (1 << 32) // (args.gallery * q.element_size()))
            for start in range(0, q.shape[0], rows):
                out.append(torch.topk(q[start : start + rows] @ g.T, k + 1, dim=1).indices)
            return recall_from_topk(torch.cat(out), target, exclude)
        if p == "faiss":
            import faiss

            index = faiss.IndexFlatIP(args.dim)
            index.add(g.float().cpu().numpy())
            _, idx = index.search(q.float().cpu().numpy(), k + 1)
            return recall_from_topk(torch.from_numpy(idx), target.cpu(), exclude.cpu())
        if p in ("reference-sweep", "triton-sweep"):
            impl = "reference" if p == "reference-sweep" else "triton"
            greater = kernels.mixed_rank_counts(parts, g, weights, positives, exclude, impl=impl)[0]
            return recall_from_ranks(greater[-1, :, 0])
        if p == "recompute-sweep":
            for w in weights:  # what a sweep costs without the three-accumulator trick
                unit = [torch.nn.functional.normalize(x.float(), dim=-1) for x in parts]
                mixed = torch.nn.functional.normalize(w[0] * unit[0] + w[1] * unit[1] + w[2] * unit[2], dim=-1)
                greater = kernels.target_rank_counts(mixed.to(dtype), g, positives, exclude)[0]
            return recall_from_ranks(greater[:, 0])
        raise SystemExit(f"unknown provider {p!r}; choose from {', '.join(PROVIDERS)}")

    warmup_s = 0.0
    if args.provider != "faiss":
        # compile the counting loops / the kernels once, on a slice (not timed): every
        # torch provider counts through them, the recompute baseline included
        saved = (q, g, target, exclude, positives)
        q, target, exclude, positives = q[:64], target[:64], exclude[:64], positives[:64]
        if sweep:
            full_parts = parts
            parts = tuple(x[:64] for x in parts)
        start = time.perf_counter()
        call()
        sync(device)
        warmup_s = time.perf_counter() - start
        q, g, target, exclude, positives = saved
        if sweep:
            parts = full_parts
    times = []
    for _ in range(args.repeat):
        sync(device)
        start = time.perf_counter()
        recall = call()
        sync(device)
        times.append(time.perf_counter() - start)
    seconds = min(times)
    s_tok = tokens if q.ndim == 3 else 1
    t_tok = tokens if g.ndim == 3 else 1
    element = torch.finfo(dtype).bits // 8
    triples = args.triples if sweep else 1
    output = args.queries * (triples * 16 if "rank" in args.provider or sweep else (k + 1) * 12)
    floor = t_min(args.queries, args.gallery, args.dim, element, output, machine_key(torch.device(device)),
                  s_tok, t_tok, 3 if sweep and args.provider != "recompute-sweep" else 1)
    flops = floor["flops"] * (triples if args.provider == "recompute-sweep" else 1)
    return {
        "provider": args.provider, "device": device,
        "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
        "dtype": args.dtype, "queries": args.queries, "gallery": args.gallery, "dim": args.dim,
        "tokens": tokens, "k": k, "triples": triples, "threads": torch.get_num_threads(),
        "seconds": seconds, "all_seconds": times, "warmup_seconds": warmup_s,
        "queries_per_s": args.queries / seconds,
        "effective_tflop_per_s": flops / seconds / 1e12,
        "effective_gb_per_s": floor["bytes"] / seconds / 1e9,
        "roofline": floor, "roofline_fraction": floor["t_min_s"] / seconds,
        "recall": recall,
    }


def main(argv=None) -> int:
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
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
