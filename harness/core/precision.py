"""Device and numeric precision choices, resolved once per run.

Precisions (`--precision`):
- "auto" (default): fp32, on every device. CoVR and CoVR-2 train and evaluate in
  fp32: Lightning Fabric with precision "32-true" (lucas-ventura/CoVR
  configs/trainer/default.yaml), and BLIP-2's ViT with vit_precision "fp32"
  (configs/model/blip2-coco.yaml).
- "fp16", "bf16": autocast everywhere, for speed (fp16 on CUDA only); DeepSpeed then
  keeps fp16 / bf16 working weights with fp32 master weights.
- "lavis": BLIP-2 as LAVIS' own evaluation runs it: the vision tower under fp16
  autocast (LAVIS' default vit_precision), the rest in fp32 (CUDA only).
"""

from __future__ import annotations

import contextlib

import torch

from harness.core.errors import HarnessError

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "lavis")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HarnessError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    if name not in PRECISIONS:
        raise HarnessError(f"--precision must be one of {', '.join(PRECISIONS)}, not {name!r}")
    if name == "auto":
        return "fp32"
    if name in ("fp16", "lavis") and device.type != "cuda":
        raise HarnessError(f"--precision {name} needs a CUDA device; on CPU use bf16 or fp32")
    return name


def autocast(precision: str, device: torch.device, part: str = "all"):
    """Mixed-precision context for forward passes. `part` is "image" for a vision
    tower's pass, anything else for the rest ("lavis" autocasts only the image part)."""
    if precision == "fp32" or (precision == "lavis" and part != "image"):
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "lavis" else DTYPES[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)


def image_tokens(backbone, pixels: torch.Tensor, precision: str, device: torch.device) -> torch.Tensor:
    """The vision tower's tokens under the precision's image autocast; fp32 again under
    "lavis" (LAVIS: `image_embeds.float()` before the Q-Former)."""
    with autocast(precision, device, "image"):
        tokens = backbone.image_tokens(pixels)
    return tokens.float() if precision == "lavis" else tokens
