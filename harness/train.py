"""Fine-tuning a backbone on a split's (reference, caption, target) triplets with
HN-NCE and in-batch negatives: AdamW, a cosine schedule (per step after a linear
warm-up, or per epoch as CoVR), gradient clipping, seeded batch order.

- Engine: plain torch (`torch_engine.py`, the default) or DeepSpeed ZeRO
  (`deepspeed_engine.py`, with --deepspeed CONFIG; the covr recipe's default).
- Ranks (torchrun or the deepspeed launcher): each global batch of
  `batch_size` pairs is split into equal rank shards; embeddings are gathered
  with gradients (`gather.py`), so N ranks compute what one process would.
- Gradient caching (`grad_cache.py`, --grad-cache-chunk c): the shard is
  embedded c pairs at a time; memory is bounded by c, gradients are full-batch.
- Frozen target side (ViT and vision_proj not trained, CoVR's recipe): target
  embeddings are computed once, in eval mode, and reused every epoch; the
  reference image's ViT pass then runs without a graph.
- State for --resume (`train_state.py`) is written atomically every
  --checkpoint-every steps, at each epoch's end and on SIGINT/SIGTERM.
"""

from __future__ import annotations

import hashlib
import math
import os
import resource
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from backbones.blip import EVAL_MAX_TEXT_LEN, TRAIN_MAX_TEXT_LEN
from harness import train_state
from harness.config import RunConfig
from harness.distributed import gather_to_rank0
from harness.errors import HarnessError
from harness.gather import world_size
from harness.grad_cache import cached_step, chunk_bounds, full_batch_step
from harness.graph_memory import GraphMeter
from harness.images import ImageStore
from harness.losses import contrastive_loss
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
    world_size: int = 1
    grad_cache_chunk: int | None = None  # per-rank chunk; None: one graph per batch
    engine: str = "torch"  # or "deepspeed <config path>"
    loss: str = "hn-nce"
    schedule: str = "step"
    peak_graph_bytes: int = 0  # largest autograd graph (saved activations) of a step
    targets_cached: bool = False
    resumed_from_step: int | None = None
    rank_parameter_sha256: list[str] = field(default_factory=list)  # trained weights, per rank: all equal


    def to_dict(self) -> dict:
        return asdict(self)


def cosine_with_warmup(warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress_ = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))

    return factor


def lr_factor(config: RunConfig, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """Multiplier of config.lr for optimizer step `step` (0-based)."""
    if config.schedule == "epoch":  # CoVR: cosine over epochs, constant within one
        return 0.5 * (1.0 + math.cos(math.pi * (step // steps_per_epoch) / config.epochs))
    return cosine_with_warmup(config.warmup_steps, total_steps)(step)


class StopRequest:
    """SIGINT / SIGTERM ask the loop to stop at the next step boundary (after
    writing the training state) instead of dying mid-update; a second SIGINT
    interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self) -> bool:
        """Every rank must take the same branch: stop if any rank was asked."""
        if world_size() == 1:
            return self.requested
        import torch.distributed as dist

        on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([1.0 if self.requested else 0.0], device=on)
        dist.all_reduce(flag)
        return bool(flag.item() > 0)


def make_engine(backbone, config: RunConfig, trainable, precision: str, device, micro_batch: int,
                micro_steps: int):
    if config.deepspeed:
        from harness.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(backbone.model, trainable, config.deepspeed, precision, config.lr,
                               config.weight_decay, config.grad_clip, micro_batch, micro_steps, device)
    from harness.torch_engine import TorchEngine

    return TorchEngine(backbone.model, trainable, config.lr, config.weight_decay, config.grad_clip)


def frozen_sides(backbone, store: ImageStore, image_id: str, device) -> tuple[bool, bool]:
    """(image tokens frozen, target embedding frozen), probed with a graph on one image."""
    pixels = backbone.normalize(store.batch([image_id]).to(device))
    with torch.enable_grad():
        tokens = backbone.image_tokens(pixels)
        target = backbone.image_embedding_from_tokens(tokens)
    return not tokens.requires_grad, not target.requires_grad


def cache_targets(backbone, store: ImageStore, image_ids: list[str], device, precision: str,
                  param_dtype, batch_size: int) -> dict[str, torch.Tensor]:
    """Target embeddings of a frozen vision side, once, in eval mode (as evaluation computes them)."""
    was_training = backbone.model.training
    backbone.model.eval()
    rows = {}
    try:
        with torch.no_grad(), autocast(precision, device) if param_dtype == torch.float32 else _null():
            for s in range(0, len(image_ids), batch_size):
                ids = image_ids[s : s + batch_size]
                pixels = backbone.normalize(store.batch(ids).to(device)).to(param_dtype)
                for image_id, emb in zip(ids, backbone.encode_image(pixels).float()):
                    rows[image_id] = emb
    finally:
        backbone.model.train(was_training)
    return rows


def _null():
    import contextlib

    return contextlib.nullcontext()


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
    world = world_size()
    rank = torch.distributed.get_rank() if world > 1 else 0
    batch_size = min(config.batch_size, len(queries))
    if batch_size % world:
        raise HarnessError(f"batch {batch_size} does not split evenly over {world} ranks")
    local = batch_size // world
    steps_per_epoch = len(queries) // batch_size  # the last partial batch is dropped
    total_steps = steps_per_epoch * config.epochs
    bounds = chunk_bounds(local, config.grad_cache_chunk)
    chunked = len(bounds) > 1

    store = ImageStore(data, backbone, [i for q in queries for i in (q.reference, q.target)])
    model = backbone.model
    trainable = backbone.trainable_parameters(config.train_vision)
    trainable_ids = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable_ids)
    tokens_frozen, targets_frozen = frozen_sides(backbone, store, queries[0].target, device)
    engine = make_engine(backbone, config, trainable, precision, device,
                         micro_batch=bounds[0][1] - bounds[0][0], micro_steps=len(bounds))
    param_dtype = engine.param_dtype
    loss_of = contrastive_loss(config.loss, config.temperature, config.hnnce_alpha, config.hnnce_beta)
    order = torch.Generator().manual_seed(config.seed)
    meter = GraphMeter(model)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    target_rows = None
    if targets_frozen:
        target_ids = list(dict.fromkeys(q.target for q in queries))
        say(f"vision side frozen: caching {len(target_ids)} target embeddings")
        target_rows = cache_targets(backbone, store, target_ids, device, precision, param_dtype,
                                    max(local, 64))

    state_path = train_state.state_dir(checkpoint_dir) if checkpoint_dir is not None else None
    progress_ = train_state.Progress()
    resumed_from = None
    if config.resume and state_path is not None:
        loaded = train_state.load(state_path, engine, device)
        if loaded is None:
            say(f"--resume: no training state at {state_path}; starting from step 0")
        else:
            progress_, resumed_from = loaded, loaded.step
            say(f"resuming from step {loaded.step}/{total_steps} ({state_path})")

    def save_state() -> None:
        if state_path is not None:
            progress_.peak_graph_bytes = meter.peak
            train_state.save(state_path, engine, progress_, device)

    def embed(batch):
        kept_tokens: dict[tuple[int, int], torch.Tensor] = {}

        def run(start: int, end: int):
            rows = batch[start:end]
            pixels = backbone.normalize(store.batch([q.reference for q in rows]).to(device)).to(param_dtype)
            context = autocast(precision, device) if param_dtype == torch.float32 else _null()
            with context:
                if tokens_frozen:
                    # A frozen ViT's tokens from gradient caching's first (no-graph) pass
                    # serve its second: one ViT pass per image, at the cost of holding
                    # the batch's tokens (no graph) for the step.
                    tokens = kept_tokens.pop((start, end), None)
                    if tokens is None:
                        with torch.no_grad():
                            tokens = backbone.image_tokens(pixels)
                        if not torch.is_grad_enabled():
                            kept_tokens[(start, end)] = tokens
                else:
                    tokens = backbone.image_tokens(pixels)
                query = backbone.query_embedding_from_tokens(tokens, [q.caption for q in rows]).float()
                if target_rows is not None:
                    target = torch.stack([target_rows[q.target] for q in rows])
                else:
                    target_pixels = backbone.normalize(
                        store.batch([q.target for q in rows]).to(device)).to(param_dtype)
                    target = backbone.encode_image(target_pixels).float()
            return query, target
        return run

    def checked_loss(epoch: int, b: int):
        def loss_fn(query, target):
            loss = loss_of(query, target)
            if not torch.isfinite(loss):
                raise HarnessError(
                    f"training loss became {loss.item()} at epoch {epoch + 1}, step {b}: "
                    "lower --lr or use --precision fp32"
                )
            return loss
        return loss_fn

    def backward(surrogate: torch.Tensor) -> None:
        engine.backward(surrogate)
        meter.graph_done()

    model.train()
    backbone.max_text_len = TRAIN_MAX_TEXT_LEN
    result = TrainResult(config.epochs, total_steps, len(queries), batch_size, 0.0, 0.0, 0,
                         world_size=world, grad_cache_chunk=config.grad_cache_chunk if chunked else None,
                         engine=f"deepspeed {config.deepspeed}" if config.deepspeed else "torch",
                         loss=config.loss, schedule=config.schedule, targets_cached=target_rows is not None,
                         resumed_from_step=resumed_from)
    earlier_seconds = progress_.seconds
    start = time.perf_counter() - earlier_seconds
    samples_this_run = 0
    if progress_.epoch_order_state is not None:
        order.set_state(progress_.epoch_order_state)
    try:
        with StopRequest() as stop:
            for epoch in range(progress_.step // steps_per_epoch, config.epochs):
                # The state before this epoch's draw: a resumed run redraws the same order.
                progress_.epoch_order_state = order.get_state()
                permutation = torch.randperm(len(queries), generator=order).tolist()
                first = progress_.step - epoch * steps_per_epoch
                batches = range(first, steps_per_epoch)
                for b in progress(batches, desc=f"epoch {epoch + 1}/{config.epochs}", unit="step"):
                    mine = permutation[b * batch_size + rank * local : b * batch_size + (rank + 1) * local]
                    batch = [queries[i] for i in mine]
                    engine.set_lr(config.lr * lr_factor(config, progress_.step, steps_per_epoch, total_steps))
                    with meter.recording():
                        if chunked:
                            loss = cached_step(local, embed(batch), checked_loss(epoch, b), backward,
                                               config.grad_cache_chunk, device)
                        else:
                            loss = full_batch_step(local, embed(batch), checked_loss(epoch, b), backward)
                    engine.step()
                    progress_.step += 1
                    samples_this_run += batch_size
                    progress_.step_losses.append(loss.item())
                    at_epoch_end = b == steps_per_epoch - 1
                    if at_epoch_end:
                        epoch_losses = progress_.step_losses[epoch * steps_per_epoch :]
                        progress_.loss_curve.append(sum(epoch_losses) / max(1, len(epoch_losses)))
                        say(f"epoch {epoch + 1}/{config.epochs}: mean loss {progress_.loss_curve[-1]:.4f}")
                        progress_.epoch_order_state = order.get_state()  # the next epoch's
                    periodic = config.checkpoint_every > 0 and progress_.step % config.checkpoint_every == 0
                    stopping = stop.agreed()
                    if at_epoch_end or periodic or stopping:
                        progress_.seconds = time.perf_counter() - start
                        save_state()
                    if stopping:
                        say(f"stopped at step {progress_.step}; training state in {state_path}; "
                            "rerun with --resume to continue")
                        raise KeyboardInterrupt
    finally:
        model.eval()
        backbone.max_text_len = EVAL_MAX_TEXT_LEN
    engine.finish()
    result.seconds = time.perf_counter() - start
    result.rank_parameter_sha256 = gather_to_rank0(parameter_sha256(trainable)) or []
    result.step_losses = progress_.step_losses
    result.loss_curve = progress_.loss_curve
    # Chance level of the symmetric loss is 2 ln(batch): every pair scored alike.
    chance = 2 * math.log(batch_size)
    result.stalled = bool(result.loss_curve) and result.loss_curve[-1] > 0.98 * chance
    if result.stalled:
        say(f"warning: training loss stayed at chance ({result.loss_curve[-1]:.3f} vs 2 ln(batch) = "
            f"{chance:.3f}): the embeddings collapsed; try a lower --lr or another --seed")
    result.samples_per_second = samples_this_run / max(result.seconds - earlier_seconds, 1e-9)
    result.peak_memory_bytes = peak_memory_bytes(device)
    result.peak_graph_bytes = max(meter.peak, progress_.peak_graph_bytes)
    if checkpoint_dir is not None:
        if rank == 0:
            save_atomically(backbone, checkpoint_dir)
        if world > 1:
            torch.distributed.barrier()
        result.checkpoint = str(checkpoint_dir)
        train_state.remove(state_path)
    return result


def parameter_sha256(params: list[torch.nn.Parameter]) -> str:
    digest = hashlib.sha256()
    for p in params:
        digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


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
