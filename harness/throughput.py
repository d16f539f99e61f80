"""Embedding throughput of the real-size architectures (random weights: speed does
not depend on their values), written as a result file that BENCHMARKS.md is built
from.

    python -m harness.throughput --out results/reference/throughput_cpu.json
    python -m harness.throughput --device cuda --precision fp16 bf16 --batch-size 64 \\
        --out results/reference/throughput_h100.json

images/s = images through the vision tower and gallery head per second;
queries/s = composed queries (vision tower + text/Q-Former) per second.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from backbones.blip import BlipComposer
from backbones.blip_configs import blip_config
from backbones.blip_tiny import tiny_tokenizer
from backbones.preprocess import ImagePreprocess
from harness.core import provenance
from harness.core.atomic import write_json
from harness.core.precision import autocast, resolve_device, resolve_precision

# A CIRR-length caption (15 tokens) made of words the offline tokenizer holds whole.
CAPTION = "make the red circle large and add a blue square at the top left"


def build(name: str):
    """A real-size backbone with random weights; the tokenizer's ids fit any vocabulary."""
    tokenizer = tiny_tokenizer()
    if name == "blip2":
        from transformers import Blip2ForImageTextRetrieval

        from backbones.blip2 import Blip2Composer
        from backbones.convert_blip2 import lavis_coco_config

        model = Blip2ForImageTextRetrieval(lavis_coco_config())
        return Blip2Composer(name, model, tokenizer, ImagePreprocess(364), "random", "random")
    from transformers import BlipForImageTextRetrieval

    model = BlipForImageTextRetrieval(blip_config(name.removeprefix("blip-")))
    return BlipComposer(name, model, tokenizer, ImagePreprocess(384), "random", "random")


@torch.no_grad()
def measure(backbone, device: torch.device, precision: str, batch_size: int, repeats: int) -> dict:
    size = backbone.image_size
    pixels = backbone.normalize(torch.randint(0, 256, (batch_size, size, size, 3), dtype=torch.uint8)).to(device)
    captions = [CAPTION] * batch_size

    def timed(fn) -> float:
        with autocast(precision, device):
            fn()  # warm-up: allocation, kernel selection
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        return (time.perf_counter() - start) / repeats

    image_seconds = timed(lambda: backbone.encode_image(pixels))
    query_seconds = timed(lambda: backbone.encode_query(pixels, captions))
    return {
        "batch_size": batch_size,
        "images_per_second": batch_size / image_seconds,
        "queries_per_second": batch_size / query_seconds,
        "parameters_millions": sum(p.numel() for p in backbone.model.parameters()) / 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.throughput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["blip-base", "blip-large", "blip2"])
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rows = []
    for name in args.backbones:
        torch.manual_seed(0)
        backbone = build(name)
        backbone.model.to(device).eval()
        for precision in args.precision:
            precision = resolve_precision(precision, device)
            row = {"backbone": name, "precision": precision,
                   **measure(backbone, device, precision, args.batch_size, args.repeats)}
            print(f"{name} {precision}: {row['images_per_second']:.2f} images/s, "
                  f"{row['queries_per_second']:.2f} queries/s", flush=True)
            rows.append(row)
        del backbone
    write_json(args.out, {
        "schema": 1, "kind": "throughput", "date": provenance.now(),
        "command": "python -m harness.throughput " + " ".join(argv if argv is not None else sys.argv[1:]),
        "rows": rows, "git": provenance.git_state(), "packages": provenance.package_versions(),
        "hardware": provenance.hardware(device),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
