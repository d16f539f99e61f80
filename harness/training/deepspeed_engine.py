"""Training through a DeepSpeed engine: ZeRO stage 1 or 2 from a checked-in JSON
(configs/deepspeed/zero{1,2}.json), fp16 with dynamic loss scaling on GPU, bf16
or fp32 on CPU (DeepSpeed refuses fp16 there).

The harness fills in what depends on the run, so the file holds only what a user
tunes (ZeRO stage, buckets, loss-scaling constants):
- train_micro_batch_size_per_gpu = the gradient-cache chunk (or the per-rank batch),
- gradient_accumulation_steps = chunks per step, train_batch_size = their product
  times the world size, gradient_clipping from the recipe,
- fp16.enabled / bf16.enabled from --precision.
The optimizer is torch's AdamW handed to DeepSpeed as a client optimizer (no JIT
compile of DeepSpeed's fused Adam); the learning rate is set by the harness each
step. Each chunk's backward is followed by the engine's micro-step, so the
chunks of a gradient-cached batch accumulate as micro-batches and the update
(reduction, unscaling, overflow check, clipping) happens on the last.

DeepSpeed compiles a small C++ op at start-up (25-60 s cold on CPU) into
TORCH_EXTENSIONS_DIR (torch's default, ~/.cache/torch_extensions, is kept
between runs: compiled once per machine). Only runs given --deepspeed pay this.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import socket
from pathlib import Path

import torch

from harness.core.distributed import world_size
from harness.core.errors import HarnessError
from harness.core.provenance import REPO

ENGINE_TAG = "engine"


def resolve_config_path(path: str) -> Path:
    """As given, else relative to the repository (recipes name `configs/deepspeed/...`)."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    if not candidate.is_absolute() and (REPO / candidate).is_file():
        return REPO / candidate
    raise HarnessError(f"DeepSpeed config {path} not found")


def config_sha256(path: str) -> str:
    return hashlib.sha256(resolve_config_path(path).read_bytes()).hexdigest()


def prepare_environment(device: torch.device) -> None:
    """Before `import deepspeed`: the CPU accelerator off CUDA, and the rendezvous
    variables a plain `python` process lacks."""
    if device.type != "cuda":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(device: torch.device) -> None:
    prepare_environment(device)
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")


def engine_config(path: str, precision: str, micro_batch: int, micro_steps: int, grad_clip: float) -> dict:
    config = copy.deepcopy(json.loads(resolve_config_path(path).read_text()))
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2):
        raise HarnessError(f"{path}: ZeRO stage {stage}; the harness calls the model outside "
                           "the engine's forward, which stage 3 needs: use stage 1 or 2")
    config["train_micro_batch_size_per_gpu"] = micro_batch
    config["gradient_accumulation_steps"] = micro_steps
    config["train_batch_size"] = micro_batch * micro_steps * world_size()
    config["gradient_clipping"] = float(grad_clip)
    config.setdefault("fp16", {})["enabled"] = precision == "fp16"
    config.setdefault("bf16", {})["enabled"] = precision == "bf16"
    return config


class DeepSpeedEngine:
    def __init__(self, model: torch.nn.Module, params: list[torch.nn.Parameter], config_path: str,
                 precision: str, lr: float, weight_decay: float, grad_clip: float,
                 micro_batch: int, micro_steps: int, device: torch.device):
        if precision == "fp16" and device.type != "cuda":
            raise HarnessError("DeepSpeed fp16 needs a GPU; on CPU use --precision bf16 or fp32")
        init_distributed(device)
        import deepspeed

        self.model = model
        self.params = params
        self.micro_steps = micro_steps
        self.param_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
        # DeepSpeed casts the whole model to the working precision; frozen weights have no
        # fp32 master copy there, so their fp32 values are kept here for `finish`
        trainable = {id(p) for p in params}
        self.frozen_fp32 = {name: p.detach().float().clone() for name, p in model.named_parameters()
                            if id(p) not in trainable} if self.param_dtype != torch.float32 else {}
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        config = engine_config(config_path, precision, micro_batch, micro_steps, grad_clip)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, model_parameters=params, config=config
        )

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of one micro-batch (chunk), then the engine's micro-step: it
        updates only after the last chunk of the step."""
        self.engine.backward(loss, scale_wrt_gas=False)
        self.engine.step()

    def step(self) -> None:
        """The update already happened at the last micro-step."""

    def set_lr(self, lr: float) -> None:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    def save(self, directory: Path, rank: int) -> None:
        """Collective: every rank writes its ZeRO partition of the optimizer state."""
        self.engine.save_checkpoint(str(directory), tag=ENGINE_TAG, save_latest=False)

    def load(self, directory: Path) -> None:
        path, _ = self.engine.load_checkpoint(str(directory), tag=ENGINE_TAG,
                                              load_optimizer_states=True, load_lr_scheduler_states=False)
        if path is None:
            raise HarnessError(f"no DeepSpeed engine state in {directory}")

    def finish(self) -> None:
        """fp32 weights for evaluation and saving. After fp16 / bf16 training these are
        the optimizer's fp32 master weights, gathered from the ZeRO partitions (a
        collective: every rank calls this), and the frozen weights as they were before
        the cast -- not the rounded working copy. CoVR saves fp32 weights too."""
        if self.param_dtype == torch.float32:
            return
        from deepspeed.utils import safe_get_full_fp32_param

        masters = [safe_get_full_fp32_param(p) for p in self.params]
        self.model.float()
        with torch.no_grad():
            for p, master in zip(self.params, masters):
                if master is None:
                    raise HarnessError("DeepSpeed holds no fp32 master copy of a trained weight")
                p.copy_(master.to(p.device))
            for name, p in self.model.named_parameters():
                if name in self.frozen_fp32:
                    p.copy_(self.frozen_fp32[name].to(p.device))
