"""Device and numeric precision choices, resolved once per run."""

from __future__ import annotations

import contextlib

import torch

from harness.core.errors import HarnessError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HarnessError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise HarnessError("--precision fp16 needs a CUDA device; on CPU use bf16 or fp32")
    return name


def autocast(precision: str, device: torch.device):
    """Mixed-precision context for inference and training forward passes."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])
