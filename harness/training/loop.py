"""Fine-tuning a backbone on a split's (reference, caption, target) triplets with
HN-NCE and in-batch negatives: AdamW, a cosine schedule (per step after a linear
warm-up, per epoch as CoVR) or none (CLIP4Cir), gradient clipping, seeded order.

- Engine: plain torch (`torch_engine.py`, the default) or DeepSpeed ZeRO
  (`deepspeed_engine.py`, with --deepspeed CONFIG; the covr recipe's default).
- Ranks (torchrun or the deepspeed launcher): each global batch of
  `batch_size` pairs is split into equal rank shards; embeddings are gathered
  with gradients (`gather.py`), so N ranks compute what one process would.
- Gradient caching (`grad_cache.py`, --grad-cache-chunk c): the shard is
  embedded c pairs at a time; memory is bounded by c, gradients are full-batch.
- Frozen target side (ViT and vision_proj not trained, CoVR's recipe): target
  embeddings are computed once, in eval mode, and reused every epoch; the
  reference image's ViT pass then runs without a graph (`pairs.py`).
- State for --resume (`state.py`) is written atomically every
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

from harness.core.distributed import gather_to_rank0, world_size
from harness.core.errors import HarnessError
from harness.core.progress import progress, say
from harness.suites.base import SplitData
from harness.suites.image_store import ImageStore
from harness.training import iterate, state
from harness.training.grad_cache import cached_step, chunk_bounds, full_batch_step
from harness.training.graph_memory import GraphMeter
from harness.training.losses import chance_loss, contrastive_loss
from harness.training.pairs import PairEmbedder, cache_targets, frozen_sides
from harness.training.settings import TrainSettings


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
    iterate: str = "rows"  # what an epoch visits (harness/training/iterate.py)
    resumed_from_step: int | None = None
    rank_parameter_sha256: list[str] = field(default_factory=list)  # trained weights, per rank: all equal
    precision: str = "fp32"  # what the steps ran in (harness/core/precision.py)

    def to_dict(self) -> dict:
        return asdict(self)


def cosine_with_warmup(warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress_ = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))

    return factor


def lr_factor(settings: TrainSettings, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """Multiplier of settings.lr for optimizer step `step` (0-based)."""
    if settings.schedule == "constant":  # CLIP4Cir's Combiner training: no scheduler
        return 1.0
    if settings.schedule == "epoch":  # CoVR: cosine over epochs, constant within one
        return 0.5 * (1.0 + math.cos(math.pi * (step // steps_per_epoch) / settings.epochs))
    return cosine_with_warmup(settings.warmup_steps, total_steps)(step)


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


def make_engine(model, settings: TrainSettings, trainable, precision: str, device, micro_batch: int,
                micro_steps: int):
    if settings.deepspeed:
        from harness.training.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(model, trainable, settings.deepspeed, precision, settings.lr,
                               settings.weight_decay, settings.grad_clip, micro_batch, micro_steps, device)
    from harness.training.torch_engine import TorchEngine

    return TorchEngine(model, trainable, settings.lr, settings.weight_decay, settings.grad_clip)


@dataclass(frozen=True)
class BatchPlan:
    """How the queries split into steps and ranks: every epoch drops the last partial batch."""

    queries: list
    units: list[list]  # what an epoch visits once (harness/training/iterate.py)
    world: int
    rank: int
    batch_size: int  # over all ranks
    local: int  # this rank's pairs per step
    steps_per_epoch: int
    total_steps: int
    bounds: list[tuple[int, int]]  # the gradient-cache chunks of a rank's shard

    @classmethod
    def of(cls, data: SplitData, settings: TrainSettings) -> BatchPlan:
        queries = [q for q in data.queries if q.target is not None]
        if settings.max_train_queries is not None:
            queries = queries[: settings.max_train_queries]
        if len(queries) < 2:
            raise HarnessError(f"{data.suite}/{data.split} has {len(queries)} training queries; need at least 2")
        world = world_size()
        groups = iterate.units(queries, settings.iterate)
        batch_size = min(settings.batch_size, len(groups))
        if batch_size % world:
            raise HarnessError(f"batch {batch_size} does not split evenly over {world} ranks")
        steps_per_epoch = len(groups) // batch_size
        return cls(queries, groups, world, torch.distributed.get_rank() if world > 1 else 0, batch_size,
                   batch_size // world, steps_per_epoch, steps_per_epoch * settings.epochs,
                   chunk_bounds(batch_size // world, settings.grad_cache_chunk))

    def shard(self, permutation: list[int], picks: list, step_in_epoch: int) -> list:
        """This rank's queries of one step (`picks`: the epoch's query of each unit)."""
        start = step_in_epoch * self.batch_size + self.rank * self.local
        return [picks[i] for i in permutation[start : start + self.local]]


class Trainer:
    """One fine-tuning run: engine, pair embedder, progress (resumable) and the loop."""

    def __init__(self, backbone, data: SplitData, settings: TrainSettings, device, precision: str,
                 checkpoint_dir: Path | None):
        self.backbone, self.settings, self.device, self.precision = backbone, settings, device, precision
        self.checkpoint_dir = checkpoint_dir
        self.plan = plan = BatchPlan.of(data, settings)
        store = ImageStore(data, backbone.preprocess, backbone.image_size,
                           [i for q in plan.queries for i in (q.reference, *data.images_of(q.target))])
        self.trainable = backbone.trainable_parameters(settings.train_vision)
        train_only(backbone.model, self.trainable)
        tokens_frozen, targets_frozen = frozen_sides(backbone, store, data.images_of(plan.queries[0].target)[0],
                                                     device)
        self.loss_of = contrastive_loss(settings.loss, settings.temperature, settings.hnnce_alpha, settings.hnnce_beta)
        self.start_engine(backbone.model, precision)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        target_rows = None
        if targets_frozen or getattr(backbone, "fixed_training_targets", False):
            target_ids = list(dict.fromkeys(q.target for q in plan.queries))
            say(f"targets fixed (a frozen vision side, or CoVR-2's features of the starting model): "
                f"caching {len(target_ids)} target embeddings")
            target_rows = cache_targets(backbone, store, target_ids, data.frames, device, precision,
                                        self.engine.param_dtype, max(plan.local, 64))
        self.pairs = PairEmbedder(backbone, store, data.frames, device, precision, self.engine.param_dtype,
                                  tokens_frozen, target_rows)
        self.targets_cached = target_rows is not None
        self.open_state()

    def start_engine(self, model, precision: str) -> None:
        """The engine over self.trainable (one micro-step per gradient-cache chunk), the seeded
        batch order and the autograd-graph meter: what every trainer starts with."""
        plan = self.plan
        self.engine = make_engine(model, self.settings, self.trainable, precision, self.device,
                                  micro_batch=plan.bounds[0][1] - plan.bounds[0][0], micro_steps=len(plan.bounds))
        self.order = torch.Generator().manual_seed(self.settings.seed)
        self.meter = GraphMeter(model)

    def open_state(self) -> None:
        """Where the resumable training state lives, and the progress it holds under --resume."""
        self.state_path = state.state_dir(self.checkpoint_dir) if self.checkpoint_dir is not None else None
        self.progress, self.resumed_from = self._resume()

    def _resume(self) -> tuple[state.Progress, int | None]:
        if not (self.settings.resume and self.state_path is not None):
            return state.Progress(), None
        loaded = state.load(self.state_path, self.engine, self.device)
        if loaded is None:
            say(f"--resume: no training state at {self.state_path}; starting from step 0")
            return state.Progress(), None
        say(f"resuming from step {loaded.step}/{self.plan.total_steps} ({self.state_path})")
        return loaded, loaded.step

    def save_state(self) -> None:
        if self.state_path is not None:
            self.progress.peak_graph_bytes = self.meter.peak
            state.save(self.state_path, self.engine, self.progress, self.device)

    def checked_loss(self, epoch: int, b: int):
        def loss_fn(query, target):
            loss = self.loss_of(query, target)
            if not torch.isfinite(loss):
                raise HarnessError(
                    f"training loss became {loss.item()} at epoch {epoch + 1}, step {b}: "
                    "lower --lr or use --precision fp32"
                )
            return loss
        return loss_fn

    def backward(self, surrogate: torch.Tensor) -> None:
        self.engine.backward(surrogate)
        self.meter.graph_done()

    def set_lr(self) -> None:
        """The schedule's learning rate for the coming optimizer step."""
        plan, settings = self.plan, self.settings
        self.engine.set_lr(settings.lr * lr_factor(settings, self.progress.step, plan.steps_per_epoch,
                                                   plan.total_steps))

    def step(self, batch, epoch: int, b: int) -> float:
        """One optimizer step on this rank's shard; its loss."""
        plan, settings = self.plan, self.settings
        self.set_lr()
        with self.meter.recording():
            if len(plan.bounds) > 1:
                loss = cached_step(plan.local, self.pairs.for_batch(batch), self.checked_loss(epoch, b),
                                   self.backward, settings.grad_cache_chunk, self.device)
            else:
                loss = full_batch_step(plan.local, self.pairs.for_batch(batch), self.checked_loss(epoch, b),
                                       self.backward)
        self.engine.step()
        return loss.item()

    def run_epochs(self, stop: StopRequest, start: float) -> int:
        """Every remaining step (the state written at epoch ends, every --checkpoint-every
        steps and when asked to stop); the number of samples this process saw."""
        plan, progress_, samples = self.plan, self.progress, 0
        for epoch in range(progress_.step // plan.steps_per_epoch, self.settings.epochs):
            # The state before this epoch's draw: a resumed run redraws the same order.
            progress_.epoch_order_state = self.order.get_state()
            permutation = torch.randperm(len(plan.units), generator=self.order).tolist()
            picks = iterate.draw(plan.units, self.order)
            first = progress_.step - epoch * plan.steps_per_epoch
            for b in progress(range(first, plan.steps_per_epoch), desc=f"epoch {epoch + 1}/{self.settings.epochs}",
                              unit="step"):
                progress_.step_losses.append(self.step(plan.shard(permutation, picks, b), epoch, b))
                progress_.step += 1
                samples += plan.batch_size
                at_epoch_end = b == plan.steps_per_epoch - 1
                if at_epoch_end:
                    self._end_epoch(epoch)
                periodic = self.settings.checkpoint_every > 0 and progress_.step % self.settings.checkpoint_every == 0
                stopping = stop.agreed()
                if at_epoch_end or periodic or stopping:
                    progress_.seconds = time.perf_counter() - start
                    self.save_state()
                if stopping:
                    say(f"stopped at step {progress_.step}; training state in {self.state_path}; "
                        "rerun with --resume to continue")
                    raise KeyboardInterrupt
        return samples

    def _end_epoch(self, epoch: int) -> None:
        losses = self.progress.step_losses[epoch * self.plan.steps_per_epoch :]
        self.progress.loss_curve.append(sum(losses) / max(1, len(losses)))
        say(f"epoch {epoch + 1}/{self.settings.epochs}: mean loss {self.progress.loss_curve[-1]:.4f}")
        self.progress.epoch_order_state = self.order.get_state()  # the next epoch's

    def run(self) -> TrainResult:
        settings, plan, model = self.settings, self.plan, self.backbone.model
        model.train()
        self.backbone.max_text_len = self.backbone.train_max_text_len
        earlier_seconds = self.progress.seconds
        start = time.perf_counter() - earlier_seconds
        if self.progress.epoch_order_state is not None:
            self.order.set_state(self.progress.epoch_order_state)
        try:
            with StopRequest() as stop:
                samples = self.run_epochs(stop, start)
        finally:
            model.eval()
            self.backbone.max_text_len = self.backbone.eval_max_text_len
        self.engine.finish()
        seconds = time.perf_counter() - start
        result = TrainResult(
            settings.epochs, plan.total_steps, len(plan.queries), plan.batch_size, seconds,
            samples / max(seconds - earlier_seconds, 1e-9), peak_memory_bytes(self.device),
            loss_curve=self.progress.loss_curve, step_losses=self.progress.step_losses, world_size=plan.world,
            grad_cache_chunk=settings.grad_cache_chunk if len(plan.bounds) > 1 else None,
            engine=f"deepspeed {settings.deepspeed}" if settings.deepspeed else "torch",
            loss=settings.loss, schedule=settings.schedule, targets_cached=self.targets_cached, iterate=settings.iterate,
            resumed_from_step=self.resumed_from, peak_graph_bytes=max(self.meter.peak, self.progress.peak_graph_bytes),
            rank_parameter_sha256=gather_to_rank0(parameter_sha256(self.trainable)) or [], precision=self.precision,
        )
        self._check_stalled(result)
        self._save(result)
        return result

    def chance_loss(self, batch_size: int) -> tuple[float, str]:
        """The loss of scoring every candidate alike, and how it is written (losses.py)."""
        return chance_loss(self.settings.loss, batch_size)

    def _check_stalled(self, result: TrainResult) -> None:
        chance, formula = self.chance_loss(result.batch_size)
        result.stalled = bool(result.loss_curve) and result.loss_curve[-1] > 0.98 * chance
        if result.stalled:
            say(f"warning: training loss stayed at chance ({result.loss_curve[-1]:.3f} vs {formula} = "
                f"{chance:.3f}): the model learned nothing; try a lower --lr or another --seed")

    def _save(self, result: TrainResult) -> None:
        if self.checkpoint_dir is None:
            return
        if self.plan.rank == 0:
            save_atomically(self.backbone, self.checkpoint_dir)
        if self.plan.world > 1:
            torch.distributed.barrier()
        result.checkpoint = str(self.checkpoint_dir)
        state.remove(self.state_path)


def train_only(model: torch.nn.Module, params: list[torch.nn.Parameter]) -> None:
    """Gradients for `params` alone among the model's parameters."""
    trainable_ids = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable_ids)


def fine_tune(backbone, data: SplitData, settings: TrainSettings, device: torch.device, precision: str,
              checkpoint_dir: Path | None = None) -> TrainResult:
    return Trainer(backbone, data, settings, device, precision, checkpoint_dir).run()


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
