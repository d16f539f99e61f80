"""One run: check inputs, (fine-tune,) embed, score, write results. The CLI calls
`run(config)`; tests call it too."""

from __future__ import annotations

import random
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from backbones import BACKBONES
from backbones.checkpoints import directory_sha256
from harness import distributed, mixing, provenance
from harness.atomic import write_json, write_text
from harness.config import RunConfig
from harness.embed import embed_split
from harness.embedding_cache import cached_embed
from harness.errors import HarnessError
from harness.metrics import CONVENTIONS, TIE_RULES
from harness.paths import cache_dir
from harness.precision import resolve_device, resolve_precision
from harness.progress import say
from harness.protocols import PROTOCOLS
from harness.report import result_markdown
from harness.suites import SUITES
from harness.suites.cirr_layout import check_images
from harness.train import fine_tune


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


def run(config: RunConfig, argv: list[str] | None = None) -> dict | None:
    started = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    backbone_entry, suite = preflight(config)
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    if distributed.launched_by_torchrun():
        # Fine-tuning splits each batch over the ranks and gathers the embeddings
        # (harness/train.py); evaluation shards the split.
        device = distributed.device_for_rank(device)
        distributed.init(device)

    data = suite.load(config.split)
    check_images(data, list(dict.fromkeys([*data.gallery, *(q.reference for q in data.queries)])))
    train_data = None
    if config.train:
        # A suite without a train split of its own (CIRCO) says what to train on instead.
        train_data = getattr(suite, "load_training", suite.load)(config.train_split)
        used = [i for q in train_data.queries if q.target for i in (q.reference, q.target)]
        check_images(train_data, list(dict.fromkeys(used)))

    seed_everything(config.seed)
    backbone = backbone_entry.load(config.load_options(), device)
    mixing.check(config, suite, data, backbone)  # --mix: refuse what it does not cover, before any work
    out_dir = Path(config.out)
    stem = f"{config.suite}_{config.split}_{config.backbone}_{config.config_id()}"

    training = None
    if train_data is not None:
        say(f"fine-tuning {config.backbone} on {train_data.suite}/{train_data.split} "
            f"({len(train_data.queries)} queries, {config.epochs} epochs, batch {config.batch_size})")
        checkpoint_dir = out_dir / "checkpoints" / stem
        result = fine_tune(backbone, train_data, config, device, precision, checkpoint_dir)
        training = result.to_dict()
        if train_data.suite != data.suite:
            training["trained_on"] = f"{train_data.suite}/{train_data.split}"
        backbone.checkpoint_id = str(checkpoint_dir)
        backbone.checkpoint_sha256 = directory_sha256(checkpoint_dir)

    say(f"embedding {config.suite}/{config.split}: {len(data.gallery)} images, {len(data.queries)} queries")
    embeddings = cached_embed(
        lambda partial: embed_split(backbone, data, device, precision, config.eval_batch_size, partial),
        backbone, data, precision, cache_dir() / "embeddings" if config.cache else None,
    )
    if embeddings is None:  # a torchrun rank other than 0: rank 0 scores and writes
        return None
    protocol = PROTOCOLS.get(suite.scoring)  # how this suite is scored (harness/protocols)
    metrics = server_files = None
    if data.has_targets:
        metrics = protocol.evaluate(data, embeddings, config)
    else:
        server_files = protocol.write_server_files(data, embeddings, out_dir, stem)
    mixed = mixing.mix_step(config, suite, data, embeddings, (backbone, device, precision), out_dir, stem) \
        if config.mix else None

    result = {
        "schema": 1,
        "date": provenance.now(),
        "command": "python -m harness.run " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "config": config.to_dict(),
        "config_hash": config.hash(),
        "seed": config.seed,
        "precision": precision,
        "protocol": {
            "suite": config.suite,
            "split": config.split,
            "queries": len(data.queries),
            "gallery_images": len(data.gallery),
            **protocol.describe(data, config),
        },
        "backbone": {
            "name": config.backbone,
            "checkpoint": backbone.checkpoint_id,
            "checkpoint_sha256": backbone.checkpoint_sha256,
            "embed_dim": backbone.embed_dim,
            "image_size": backbone.image_size,
            "parameters": sum(p.numel() for p in backbone.model.parameters()),
        },
        "metrics": metrics,
        **({"mixing": mixed} if mixed else {}),
        "server_files": server_files,
        "training": training,
        "data": data.provenance,
        "timings": {"embedding": embeddings.timings, "total_seconds": time.perf_counter() - started},
        "git": provenance.git_state(),
        "packages": provenance.package_versions(),
        "hardware": provenance.hardware(device),
    }
    result_path = write_json(out_dir / f"{stem}.json", result)
    table = result_markdown(result)
    write_text(result_path.with_suffix(".md"), table)
    print(table)
    say(f"results: {result_path}")
    return result
