"""Fine-tuning a backbone on a split's (reference, caption, target) triplets with
HN-NCE and in-batch negatives: AdamW, linear warm-up then cosine decay per step,
gradient clipping, seeded batch order. Plain torch on one process; the DeepSpeed
engine and gathered negatives build on this loop."""

from __future__ import annotations

import math
import os
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from backbones.blip import EVAL_MAX_TEXT_LEN, TRAIN_MAX_TEXT_LEN
from harness.config import RunConfig
from harness.errors import HarnessError
from harness.images import ImageStore
from harness.losses import hn_nce
from harness.precision import autocast
from harness.progress import progress, say
from harness.suites.base import SplitData


@dataclass
class TrainResult:
    epochs: int
    steps: int
    train_queries: int
    batch_size: int
    seconds: float
    samples_per_second: float
    peak_memory_bytes: int
    loss_curve: list[float] = field(default_factory=list)  # one mean loss per epoch
    step_losses: list[float] = field(default_factory=list)
    checkpoint: str | None = None
    stalled: bool = False  # the last epoch's loss stayed at chance: embeddings collapsed


    def to_dict(self) -> dict:
        return asdict(self)


def cosine_with_warmup(warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress_ = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))

    return factor


def fine_tune(
    backbone,
    data: SplitData,
    config: RunConfig,
    device: torch.device,
    precision: str,
    checkpoint_dir: Path | None = None,
) -> TrainResult:
    queries = [q for q in data.queries if q.target is not None]
    if config.max_train_queries is not None:
        queries = queries[: config.max_train_queries]
    if len(queries) < 2:
        raise HarnessError(f"{data.suite}/{data.split} has {len(queries)} training queries; need at least 2")
    batch_size = min(config.batch_size, len(queries))
    steps_per_epoch = len(queries) // batch_size  # the last partial batch is dropped
    total_steps = steps_per_epoch * config.epochs

    store = ImageStore(data, backbone, [i for q in queries for i in (q.reference, q.target)])
    model = backbone.model
    trainable = backbone.trainable_parameters(config.train_vision)
    trainable_ids = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable_ids)
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(config.warmup_steps, total_steps)
    )
    order = torch.Generator().manual_seed(config.seed)

    model.train()
    backbone.max_text_len = TRAIN_MAX_TEXT_LEN
    result = TrainResult(config.epochs, total_steps, len(queries), batch_size, 0.0, 0.0, 0)
    start = time.perf_counter()
    try:
        for epoch in range(config.epochs):
            permutation = torch.randperm(len(queries), generator=order).tolist()
            epoch_losses = []
            batches = range(steps_per_epoch)
            for b in progress(batches, desc=f"epoch {epoch + 1}/{config.epochs}", unit="step"):
                batch = [queries[i] for i in permutation[b * batch_size : (b + 1) * batch_size]]
                reference = backbone.normalize(store.batch([q.reference for q in batch]).to(device))
                target = backbone.normalize(store.batch([q.target for q in batch]).to(device))
                with autocast(precision, device):
                    query_emb = backbone.encode_query(reference, [q.caption for q in batch])
                    target_emb = backbone.encode_image(target)
                loss = hn_nce(
                    query_emb, target_emb, config.temperature, config.hnnce_alpha, config.hnnce_beta
                )
                if not torch.isfinite(loss):
                    raise HarnessError(
                        f"training loss became {loss.item()} at epoch {epoch + 1}, step {b}: "
                        "lower --lr or use --precision fp32"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
                optimizer.step()
                schedule.step()
                epoch_losses.append(loss.item())
            result.step_losses.extend(epoch_losses)
            result.loss_curve.append(sum(epoch_losses) / max(1, len(epoch_losses)))
            say(f"epoch {epoch + 1}/{config.epochs}: mean loss {result.loss_curve[-1]:.4f}")
    finally:
        model.eval()
        backbone.max_text_len = EVAL_MAX_TEXT_LEN
    result.seconds = time.perf_counter() - start
    # Chance level of the symmetric loss is 2 ln(batch): every pair scored alike.
    chance = 2 * math.log(batch_size)
    result.stalled = bool(result.loss_curve) and result.loss_curve[-1] > 0.98 * chance
    if result.stalled:
        say(f"warning: training loss stayed at chance ({result.loss_curve[-1]:.3f} vs 2 ln(batch) = "
            f"{chance:.3f}): the embeddings collapsed; try a lower --lr or another --seed")
    result.samples_per_second = total_steps * batch_size / max(result.seconds, 1e-9)
    result.peak_memory_bytes = peak_memory_bytes(device)
    if checkpoint_dir is not None:
        save_atomically(backbone, checkpoint_dir)
        result.checkpoint = str(checkpoint_dir)
    return result


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def save_atomically(backbone, directory: Path) -> None:
    """Write into a sibling temporary folder, then rename: never a half-written checkpoint."""
    directory = Path(directory)
    tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    backbone.save(tmp)
    if directory.exists():
        old = directory.with_name(f"{directory.name}.old-{os.getpid()}")
        directory.rename(old)
        tmp.rename(directory)
        shutil.rmtree(old)
    else:
        tmp.rename(directory)
