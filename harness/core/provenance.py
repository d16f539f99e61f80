"""What a result needs to be trusted and rerun: code version, packages, machine."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = ("torch", "transformers", "numpy", "tokenizers", "safetensors", "pillow", "triton", "deepspeed",
            "scipy-openblas32", "faiss-cpu")  # the last two: the fp32 scoring GEMM, the peer
REPO = Path(__file__).resolve().parents[2]  # harness/core/provenance.py -> the repository


def git_state() -> dict:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
            )
            return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit or "unknown", "dirty": bool(status) if status is not None else None}


def package_versions() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


# Instruction sets that change which kernels MKL, oneDNN and torch pick (and so the bits).
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def cpu_identity() -> dict:
    """The first processor of /proc/cpuinfo: model name (lscpu's "Model name"), vendor,
    family / model / stepping numbers (a VM may show only "AMD EPYC" as the name: the
    numbers tell Zen 4 from Zen 5) and the instruction sets that matter here."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except OSError:
        pass
    flags = set(fields.get("flags", "").split())
    return {
        "cpu": fields.get("model name") or platform.processor() or "unknown",
        "cpu_vendor": fields.get("vendor_id"),
        "cpu_family_model_stepping": "/".join(fields.get(k, "?") for k in ("cpu family", "model", "stepping")),
        "cpu_isa": [flag for flag in ISA_FLAGS if flag in flags],
    }


def cpu_model() -> str:
    return cpu_identity()["cpu"]


def blas() -> str:
    """The BLAS torch calls for CPU matmuls, with its version where the build says it
    (e.g. "mkl 2024.2"), and the CPU kernels torch dispatched to (e.g. AVX512)."""
    config = torch.__config__.show()
    match = re.search(r"BLAS_INFO=(\w+)", config)
    name = match.group(1) if match else "unknown"
    version = re.search(r"Math Kernel Library Version ([\d.]+)", config) if name == "mkl" else None
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{name}{' ' + version.group(1) if version else ''}, torch CPU kernels {capability}"


def hardware(device: torch.device) -> dict:
    info = {
        "machine": platform.machine(),
        "system": platform.system(),
        **cpu_identity(),
        "blas": blas(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def describe_machine(hw: dict) -> str:
    """One line naming the machine a number came from: GPU, CPU model (with its family/
    model/stepping numbers), BLAS, cores, threads, memory."""
    cpu = hw["cpu"] + (f" (family/model/stepping {hw['cpu_family_model_stepping']})"
                       if hw.get("cpu_family_model_stepping") else "")
    host = f"{cpu}, BLAS {hw.get('blas', 'not recorded')}"
    if hw.get("gpu"):
        return f"{hw['gpu']} (host {host})"
    return f"{host}, {hw['cpu_count']} cores, {hw['torch_threads']} torch threads, {hw['memory_gib']} GiB"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
