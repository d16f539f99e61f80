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

Training under "auto" takes its recipe's precision (harness/training/recipes.py):
"fp32", or NATIVE_BF16, bf16 autocast with fp32 master weights where the device
computes bf16 in hardware (CPUs with avx512_bf16 or AMX, CUDA GPUs that support it)
and fp32 elsewhere, where autocast would emulate bf16 at a loss. Evaluation under
"auto" stays fp32. A precision given by name applies to both.
"""

from __future__ import annotations

import contextlib

import torch

from harness.core.errors import HarnessError
from harness.core.provenance import cpu_identity

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "lavis")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
NATIVE_BF16 = "bf16-native"
TRAIN_PRECISIONS = ("fp32", NATIVE_BF16)  # a recipe's
# CPU flags (/proc/cpuinfo) of bf16 arithmetic in hardware: oneDNN's bf16 GEMMs use them
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


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


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return any(flag in cpu_identity()["cpu_isa"] for flag in BF16_CPU_FLAGS)


def training_precision(name: str, recipe_precision: str, device: torch.device) -> str:
    """Fine-tuning's precision: `name` (--precision) when given, else under "auto" the
    recipe's, NATIVE_BF16 resolved on this device."""
    if name != "auto":
        return resolve_precision(name, device)
    if recipe_precision not in TRAIN_PRECISIONS:
        raise HarnessError(f"a recipe's train_precision must be one of {', '.join(TRAIN_PRECISIONS)}, "
                           f"not {recipe_precision!r}")
    if recipe_precision == NATIVE_BF16:
        return "bf16" if native_bf16(device) else "fp32"
    return recipe_precision


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
