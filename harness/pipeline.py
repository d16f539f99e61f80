"""One run: check inputs, (fine-tune,) embed, score, write results. The CLI calls
`run(config)`; tests call it too."""

from __future__ import annotations

import random
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from backbones import BACKBONES
from backbones.checkpoints import directory_sha256
from harness.config import RunConfig
from harness.core import distributed, provenance
from harness.core.atomic import write_json, write_text
from harness.core.errors import HarnessError
from harness.core.paths import cache_dir
from harness.core.precision import resolve_device, resolve_precision
from harness.core.progress import say
from harness.evaluation.embed import SplitEmbeddings, embed_split
from harness.evaluation.embedding_cache import cached_embed
from harness.evaluation.metrics import CONVENTIONS, TIE_RULES
from harness.evaluation.protocols import PROTOCOLS
from harness.mixing import modes
from harness.mixing.step import mix_step
from harness.reports.run import result_markdown
from harness.suites import SUITES, SplitData
from harness.suites.cirr_layout import check_images
from harness.training.loop import fine_tune


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def preflight(config: RunConfig):
    """Everything that can be checked without loading a model, all problems at once."""
    if config.convention not in CONVENTIONS:
        raise HarnessError(f"--convention must be one of {', '.join(CONVENTIONS)}")
    if config.tie_rule not in TIE_RULES:
        raise HarnessError(f"--tie-rule must be one of {', '.join(TIE_RULES)}")
    backbone_entry = BACKBONES.get(config.backbone)
    suite_cls = SUITES.get(config.suite)
    problems: list[str] = []
    try:
        problems += backbone_entry.check(config.load_options())
    except HarnessError as err:
        problems.append(str(err))
    try:
        suite = suite_cls(Path(config.data_root) if config.data_root else None)
    except HarnessError as err:
        problems.append(str(err))
    if problems:
        raise HarnessError("cannot start:\n- " + "\n- ".join(problems))
    return backbone_entry, suite


@dataclass
class Model:
    """The loaded backbone on its device, and how it embeds a split (through the
    embedding cache when the run keeps one)."""

    backbone: object
    device: torch.device
    precision: str
    batch_size: int
    cache: Path | None

    def embed(self, data: SplitData) -> SplitEmbeddings | None:
        """The split's embeddings; None on a torchrun rank other than 0 (rank 0 scores)."""
        say(f"embedding {data.suite}/{data.split}: {len(data.gallery)} images, {len(data.queries)} queries")
        return cached_embed(
            lambda partial: embed_split(self.backbone, data, self.device, self.precision, self.batch_size, partial),
            self.backbone, data, self.precision, self.cache,
        )


def load_splits(config: RunConfig, suite) -> tuple[SplitData, SplitData | None]:
    """The evaluated split and the training split (if --train), every image they use checked."""
    data = suite.load(config.split)
    check_images(data, list(dict.fromkeys([*data.gallery, *(q.reference for q in data.queries)])))
    if not config.train:
        return data, None
    # A suite without a train split of its own (CIRCO) says what to train on instead.
    train_data = getattr(suite, "load_training", suite.load)(config.train_split)
    used = [i for q in train_data.queries if q.target for i in (q.reference, q.target)]
    check_images(train_data, list(dict.fromkeys(used)))
    return data, train_data


def train(config: RunConfig, model: Model, train_data: SplitData, data: SplitData, checkpoint_dir: Path) -> dict:
    """Fine-tune, then evaluate the checkpoint written: the results' "training" block."""
    backbone = model.backbone
    queries = len(train_data.queries) if config.max_train_queries is None else \
        min(len(train_data.queries), config.max_train_queries)
    say(f"fine-tuning {config.backbone} on {train_data.suite}/{train_data.split} "
        f"({queries} queries, {config.epochs} epochs, batch {config.batch_size})")
    training = fine_tune(backbone, train_data, config.training(), model.device, model.precision,
                         checkpoint_dir).to_dict()
    if train_data.suite != data.suite:
        training["trained_on"] = f"{train_data.suite}/{train_data.split}"
    backbone.checkpoint_id = str(checkpoint_dir)
    backbone.checkpoint_sha256 = directory_sha256(checkpoint_dir)
    return training


def run(config: RunConfig, argv: list[str] | None = None) -> dict | None:
    started = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    backbone_entry, suite = preflight(config)
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    if distributed.launched_by_torchrun():
        # Fine-tuning splits each batch over the ranks and gathers the embeddings
        # (harness/training/loop.py); evaluation shards the split.
        device = distributed.device_for_rank(device)
        distributed.init(device)
    data, train_data = load_splits(config, suite)
    seed_everything(config.seed)
    model = Model(backbone_entry.load(config.load_options(), device), device, precision, config.eval_batch_size,
                  cache_dir() / "embeddings" if config.cache else None)
    if config.mix:  # refuse what mixing does not cover, before any work
        modes.check(config.mixing(), suite, data, model.backbone)
    out_dir = Path(config.out)
    stem = f"{config.suite}_{config.split}_{config.backbone}_{config.config_id()}"
    training = train(config, model, train_data, data, out_dir / "checkpoints" / stem) if train_data else None
    embeddings = model.embed(data)
    if embeddings is None:  # a torchrun rank other than 0: rank 0 scores and writes
        return None
    protocol = PROTOCOLS.get(suite.scoring)  # how this suite is scored (harness/evaluation/protocols)
    scored = {"metrics": None, "server_files": None}
    if data.has_targets:
        scored["metrics"] = protocol.evaluate(data, embeddings, config.scoring_rules())
    else:
        scored["server_files"] = protocol.write_server_files(data, embeddings, out_dir, stem)
    if config.mix:
        scored["mixing"] = mix_step(config.mixing(), suite, data, embeddings, model.embed, out_dir, stem)
    result = record(config, argv, data, protocol, model, scored, training, embeddings.timings, started)
    result_path = write_json(out_dir / f"{stem}.json", result)
    table = result_markdown(result)
    write_text(result_path.with_suffix(".md"), table)
    print(table)
    say(f"results: {result_path}")
    return result


def record(config: RunConfig, argv, data: SplitData, protocol, model: Model, scored: dict,
           training: dict | None, embedding_timings: dict, started: float) -> dict:
    """The results file: what was computed, how (config, protocol, seed), and where."""
    backbone = model.backbone
    return {
        "schema": 1,
        "date": provenance.now(),
        "command": "python -m harness.run " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "config": config.to_dict(),
        "config_hash": config.hash(),
        "seed": config.seed,
        "precision": model.precision,
        "protocol": {
            "suite": config.suite,
            "split": config.split,
            "queries": len(data.queries),
            "gallery_images": len(data.gallery),
            **protocol.describe(data, config.scoring_rules()),
        },
        "backbone": {
            "name": config.backbone,
            "checkpoint": backbone.checkpoint_id,
            "checkpoint_sha256": backbone.checkpoint_sha256,
            "embed_dim": backbone.embed_dim,
            "image_size": backbone.image_size,
            "parameters": sum(p.numel() for p in backbone.model.parameters()),
        },
        "metrics": scored["metrics"],
        **({"mixing": scored["mixing"]} if scored.get("mixing") else {}),
        "server_files": scored["server_files"],
        "training": training,
        "data": data.provenance,
        "timings": {"embedding": embedding_timings, "total_seconds": time.perf_counter() - started},
        "git": provenance.git_state(),
        "packages": provenance.package_versions(),
        "hardware": provenance.hardware(model.device),
    }
