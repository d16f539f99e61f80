"""Fine-tuning steps of a real-size backbone through DeepSpeed ZeRO (fp16 on GPU):
samples/s and peak memory of a plain batch against a gradient-cached batch of 1024.

    python -m benches.train_step_gpu --out OUT              # on a GPU: BLIP-Large, fp16, ZeRO-2
    python -m benches.train_step_gpu --out OUT --backbone blip-tiny --device cpu \\
        --precision fp32 --configs plain:8 cached:8:4 --steps 1   # the script's logic, on CPU

Random weights, pixels and captions (speed and memory do not depend on them).
The step is CoVR's recipe as the harness runs it: ViT and vision_proj frozen (the
reference image's ViT pass runs without a graph; target embeddings come from the
cache, as harness/training/loop.py precomputes them), text encoder and text_proj trained
with HN-NCE, AdamW handed to DeepSpeed. A configuration is `plain:B` (one graph
over B pairs) or `cached:B:C` (gradient caching, chunks of C). Each runs a fresh
model and engine: one warm-up step, then --steps timed steps.

samples/s = B * steps / wall seconds of the timed steps (CUDA synchronised);
peak memory = torch.cuda.max_memory_allocated over warm-up and timed steps
(weights, fp32 master copy, AdamW state, activations); on CPU, the process's peak
RSS. An out-of-memory configuration is recorded as such, not dropped.

Writes OUT/train_step_<device>.json (kind "train_step"), which
`python -m harness.report` renders once copied into results/reference/.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from harness.core import distributed, provenance
from harness.core.atomic import write_json
from harness.core.precision import resolve_device, resolve_precision
from harness.throughput import CAPTION
from harness.training.grad_cache import cached_step, chunk_bounds, full_batch_step
from harness.training.loop import peak_memory_bytes
from harness.training.losses import contrastive_loss
from harness.training.pairs import frozen_tokens

DEFAULT_CONFIGS = ["plain:128", "plain:256", "plain:1024", "cached:1024:128", "cached:1024:64"]


def parse_config(text: str) -> dict:
    kind, *numbers = text.split(":")
    if kind == "plain" and len(numbers) == 1:
        return {"name": text, "batch_size": int(numbers[0]), "grad_cache_chunk": None}
    if kind == "cached" and len(numbers) == 2:
        return {"name": text, "batch_size": int(numbers[0]), "grad_cache_chunk": int(numbers[1])}
    raise argparse.ArgumentTypeError(f"{text!r}: use plain:B or cached:B:C")


def build_backbone(name: str, device: torch.device):
    if name == "blip-tiny":
        from backbones.blip_tiny import build_random

        backbone = build_random(seed=0)
        backbone.model.to(device)
        return backbone
    from harness.throughput import build

    with torch.device(device):  # initialise on the GPU: far faster than on CPU, then copying
        return build(name)


def prepare(args, config: dict, device: torch.device, precision: str):
    """(backbone, engine, step): a fresh model and DeepSpeed engine for one
    configuration, and one training step on random pixels, captions and targets."""
    from harness.training.deepspeed_engine import DeepSpeedEngine

    batch, chunk = config["batch_size"], config["grad_cache_chunk"]
    bounds = chunk_bounds(batch, chunk)
    backbone = build_backbone(args.backbone, device)
    backbone.model.train()
    backbone.max_text_len = backbone.train_max_text_len
    trainable = backbone.trainable_parameters(False)
    ids = {id(p) for p in trainable}
    for p in backbone.model.parameters():
        p.requires_grad_(id(p) in ids)
    engine = DeepSpeedEngine(backbone.model, trainable, args.zero, precision, lr=1e-4, weight_decay=0.05,
                             grad_clip=0.0, micro_batch=bounds[0][1] - bounds[0][0],
                             micro_steps=len(bounds), device=device)
    size = backbone.image_size
    pixels = backbone.normalize(torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8))
    pixels = pixels.to(device, engine.param_dtype)
    targets = F.normalize(torch.randn(batch, backbone.embed_dim, device=device), dim=-1)
    captions = [CAPTION] * batch
    loss_fn = contrastive_loss("hn-nce", 0.07, 1.0, 0.5)
    kept_tokens: dict = {}

    def embed(start: int, end: int):
        # ViT frozen: no graph, its tokens kept between the cached step's passes (as training does)
        tokens = frozen_tokens(backbone.image_tokens, pixels[start:end], kept_tokens, (start, end))
        return backbone.query_embedding_from_tokens(tokens, captions[start:end]).float(), targets[start:end]

    def step():
        if len(bounds) > 1:
            cached_step(batch, embed, loss_fn, engine.backward, chunk, device)
        else:
            full_batch_step(batch, embed, loss_fn, engine.backward)
        engine.step()

    return backbone, engine, step


def seconds_per_step(step, steps: int, device: torch.device) -> float:
    """One warm-up step (optimizer state, allocator, kernel selection), then `steps` timed."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - start) / steps


def measure(args, config: dict, device: torch.device, precision: str) -> dict:
    row = {**config, "precision": precision, "zero_stage": None, "samples_per_second": None,
           "peak_memory_bytes": None, "seconds_per_step": None, "status": "ok"}
    torch.manual_seed(0)
    backbone = engine = None
    try:
        backbone, engine, step = prepare(args, config, device, precision)
        row["zero_stage"] = engine.engine.zero_optimization_stage()
        seconds = seconds_per_step(step, args.steps, device)
        row.update(samples_per_second=config["batch_size"] / seconds, seconds_per_step=seconds,
                   peak_memory_bytes=peak_memory_bytes(device))
    except torch.OutOfMemoryError:
        row.update(status="out of memory",
                   peak_memory_bytes=int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None)
    finally:
        engine = backbone = step = None  # noqa: F841  (drop the references before freeing memory)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"{row['name']}: {row['status']}, {row['samples_per_second'] or 0:.1f} samples/s, "
          f"peak {(row['peak_memory_bytes'] or 0) / 2**20:.0f} MiB", file=sys.stderr, flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benches.train_step_gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the result JSON")
    parser.add_argument("--backbone", default="blip-large", choices=["blip-large", "blip-base", "blip-tiny"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", help="auto: fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--zero", default="configs/deepspeed/zero2.json", help="DeepSpeed ZeRO config")
    parser.add_argument("--configs", nargs="+", type=parse_config,
                        default=[parse_config(c) for c in DEFAULT_CONFIGS])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    rows = [measure(args, config, device, precision) for config in args.configs]
    result = {
        "kind": "train_step",
        "backbone": args.backbone,
        "command": "python -m benches.train_step_gpu " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": provenance.now(),
        "zero_config": args.zero,
        "rows": rows,
        "git": provenance.git_state(),
        "packages": provenance.package_versions(),
        "hardware": provenance.hardware(device),
    }
    path = write_json(args.out / f"train_step_{device.type}.json", result)
    print(path)
    distributed.finish(wait_for_all=False)  # DeepSpeed made a process group of one
    return 0


if __name__ == "__main__":
    distributed.exit_process(main())
