"""What fine-tuning uses of a run, in one typed object (built by RunConfig.training())."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int  # pairs per optimizer step, over all ranks
    lr: float
    weight_decay: float
    warmup_steps: int
    grad_clip: float
    temperature: float
    hnnce_alpha: float
    hnnce_beta: float
    train_vision: bool
    max_train_queries: int | None
    loss: str  # harness/training/losses.py
    schedule: str  # "step": warm-up then cosine per step; "epoch": cosine per epoch (CoVR); "constant"
    deepspeed: str | None  # ZeRO config JSON, or None for the plain torch engine
    grad_cache_chunk: int | None  # per-rank chunk for gradient caching; None: one graph per batch
    checkpoint_every: int  # also write the training state every N steps (0: epoch ends only)
    resume: bool
    seed: int
    iterate: str = "rows"  # "rows" or "targets" (harness/training/iterate.py)
