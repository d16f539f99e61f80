"""One run: check inputs, (fine-tune,) embed, score, write results. The CLI calls
`run(config)`; tests call it too."""

from __future__ import annotations

import dataclasses
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
from harness.core.errors import HarnessError
from harness.core.paths import cache_dir
from harness.core.precision import resolve_device, resolve_precision, training_precision
from harness.core.progress import say
from harness.evaluation import shard_scoring, token_pooling
from harness.evaluation.embed import SplitEmbeddings, embed_split
from harness.evaluation.embedding_cache import cached_embed
from harness.evaluation.fingerprint import fingerprint, model_fields
from harness.evaluation.fixed_gallery import BEFORE_TRAINING, LOADED, gallery_rule, with_gallery_of
from harness.evaluation.fixed_gallery import describe as describe_gallery
from harness.evaluation.metrics import CONVENTIONS, TIE_RULES
from harness.evaluation.per_query import write_records
from harness.evaluation.protocols import PROTOCOLS, resolved
from harness.mixing import modes
from harness.mixing.step import mix_step
from harness.outputs import protocol_fields, result_fields, score, write_outputs
from harness.rerank import RERANKERS
from harness.rerank.base import TUNED_FUSION
from harness.rerank.step import rerank_step
from harness.rerank.train import train_reranker
from harness.similarity import settings as similarity_settings
from harness.similarity.dense import check_score_matrix
from harness.similarity.step import similarity_step
from harness.suites import SUITES, SplitData
from harness.suites.captions import CLEANINGS, cleaned
from harness.suites.cirr_layout import GALLERIES, check_images, folder_gallery
from harness.training import clip_stages
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
    if config.caption_cleaning not in CLEANINGS:
        raise HarnessError(f"--caption-cleaning must be one of {', '.join(CLEANINGS)}")
    if config.gallery not in GALLERIES:
        raise HarnessError(f"--gallery must be one of {', '.join(GALLERIES)}")
    backbone_entry = BACKBONES.get(config.backbone)
    suite_cls = SUITES.get(config.suite)
    problems: list[str] = []
    if config.rerank:
        problems += RERANKERS.get(config.rerank).check(config.rerank, config.backbone)
    try:
        problems += backbone_entry.check(config.load_options())
    except HarnessError as err:
        problems.append(str(err))
    try:
        suite = suite_cls(Path(config.data_root) if config.data_root else None, **config.suite_options(suite_cls))
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
    """The evaluated split (its gallery as --gallery says) and the training split (if
    --train), captions cleaned as --caption-cleaning says, every image they use checked."""
    data = suite.load(config.split)
    if config.gallery == "folder":
        if getattr(suite, "scoring", "") != "cirr":
            raise HarnessError(f"--gallery folder is defined for CIRR-layout suites (cirr, shapes), not {config.suite}")
        data = folder_gallery(data)
    data = cleaned(data, config.caption_cleaning)
    gallery_images = [i for item in data.gallery for i in data.images_of(item)]
    check_images(data, list(dict.fromkeys([*gallery_images, *(q.reference for q in data.queries)])))
    if not clip_stages.needs_train_split(config.train, config.backbone, config.composer):
        return data, None
    # A suite without a train split of its own (CIRCO) says what to train on instead.
    train_data = cleaned(getattr(suite, "load_training", suite.load)(config.train_split), config.caption_cleaning)
    used = [i for q in train_data.queries if q.target for i in (q.reference, *train_data.images_of(q.target))]
    check_images(train_data, list(dict.fromkeys(used)))
    return data, train_data


def with_text_length(backbone, suite) -> None:
    """A suite that fixes the evaluation text length (dense-webvid-covr's --text-length)
    sets it on the backbone before anything is embedded: it is then in the embedding
    cache's key and the fingerprint's text_length; training keeps the backbone's own."""
    length = getattr(suite, "text_length", None)
    if length is None:
        return
    if length > backbone.text_positions:
        raise HarnessError(f"--text-length {length} exceeds the {backbone.text_positions} text positions of this "
                           "backbone")
    backbone.eval_max_text_len = backbone.max_text_len = length


def train(config: RunConfig, model: Model, train_data: SplitData | None, data: SplitData, checkpoint_dir: Path,
          backbone_entry) -> dict | None:
    """Fine-tune, then evaluate the checkpoint written: the results' "training" block.
    A CLIP backbone trains in its composer's stages (harness/training/clip_stages.py)."""
    if config.composer is not None:
        model.backbone, training = clip_stages.train_stages(
            model.backbone, backbone_entry, config.load_options(), clip_stages.composer_data(train_data),
            config.training(), clip_stages.pretraining_settings(config.training(), config.composer, config.seed),
            model.device, model.precision, checkpoint_dir)
        return training
    backbone = model.backbone
    queries = len(train_data.queries) if config.max_train_queries is None else \
        min(len(train_data.queries), config.max_train_queries)
    precision = training_precision(config.precision, config.train_precision, model.device)
    say(f"fine-tuning {config.backbone} on {train_data.suite}/{train_data.split} "
        f"({queries} queries, {config.epochs} epochs, batch {config.batch_size}, {precision})")
    training = fine_tune(backbone, train_data, config.training(), model.device, precision, checkpoint_dir).to_dict()
    if train_data.suite != data.suite:
        training["trained_on"] = f"{train_data.suite}/{train_data.split}"
    backbone.checkpoint_id = str(checkpoint_dir)
    backbone.checkpoint_sha256 = directory_sha256(checkpoint_dir)
    return training


def fine_tune_and_embed(config: RunConfig, model: Model, data: SplitData, train_data: SplitData | None,
                        backbone_entry, checkpoint_dir: Path):
    """(embeddings, the "training" block, the gallery model's record): fine-tune if
    asked, embed the split, the gallery side from the model `--gallery-model` names
    (harness/evaluation/fixed_gallery.py)."""
    backbone = model.backbone
    rule = gallery_rule(config.gallery_model, backbone, config.train, config.checkpoint,
                        config.checkpoint_format, getattr(backbone_entry, "default_checkpoint", None))
    gallery = None
    record = describe_gallery(rule, backbone.checkpoint_id, backbone.checkpoint_sha256)
    if rule == BEFORE_TRAINING:
        gallery = model.embed(data)
    training = train(config, model, train_data, data, checkpoint_dir, backbone_entry) if config.train else None
    backbone = model.backbone  # a CLIP backbone's pre-training loads it anew
    embeddings = model.embed(data)
    if rule not in (LOADED, BEFORE_TRAINING):
        say(f"gallery features from {rule} (--gallery-model)")
        options = dataclasses.replace(config.load_options(), checkpoint=rule, checkpoint_format=None)
        other = Model(backbone_entry.load(options, model.device), model.device, model.precision, model.batch_size,
                      model.cache)
        gallery = other.embed(data)
        record = describe_gallery(rule, other.backbone.checkpoint_id, other.backbone.checkpoint_sha256)
    if rule == LOADED:  # after training: the fine-tuned checkpoint
        record = describe_gallery(rule, backbone.checkpoint_id, backbone.checkpoint_sha256)
    if embeddings is not None and gallery is not None:
        embeddings = with_gallery_of(embeddings, gallery)
    return embeddings, training, record


def check_second_stage(settings, data: SplitData) -> None:
    """What the second stage refuses, before any work."""
    if settings.fusion == TUNED_FUSION and not data.has_targets:
        raise HarnessError(f"--rerank-fusion tuned needs targets to tune on; {data.suite}/{data.split} has none: "
                           "give a fixed alpha (e.g. --rerank-fusion 0.5, chosen on val) or none")
    check_score_matrix(data, len(data.gallery), "--rerank (the final ranking)")


def two_stage(config: RunConfig, model: Model, suite, data: SplitData, train_data: SplitData | None, embeddings,
              protocol, rules, out_dir: Path, stem: str):
    """The re-ranker (from the first stage's weights or --rerank-checkpoint, fine-tuned on
    hard negatives when asked), then the second stage (harness/rerank/step.py): (its block,
    the final ranking's per-query entries); None on a torchrun rank other than 0."""
    settings = config.rerank_settings()
    entry = RERANKERS.get(settings.reranker)
    if settings.checkpoint:
        reranker = entry.load(settings.reranker, config.backbone, settings.checkpoint, config.seed, model.device)
    else:
        reranker = entry.start(settings.reranker, model.backbone)
    training = None
    if settings.train:
        if train_data is None:
            train_data = cleaned(getattr(suite, "load_training", suite.load)(config.train_split),
                                 config.caption_cleaning)
        train_emb = model.embed(train_data)  # None on a torchrun rank other than 0
        if train_emb is not None:
            train_emb = token_pooling.pooled(train_emb, rules.token_pooling)
        checkpoint_dir = out_dir / "checkpoints" / f"{stem}.rerank-{settings.reranker}"
        training = train_reranker(reranker, settings, config.training(), train_data, train_emb, model.device,
                                  model.precision, checkpoint_dir, config.eval_batch_size)
        reranker.saved_to(checkpoint_dir)
    out = rerank_step(settings, reranker, protocol, rules, data, embeddings, model.device, model.precision,
                      config.eval_batch_size, out_dir, stem)
    if out is None:
        return None
    out[0]["training"] = training
    return out


def with_second_stage(scored: dict, block: dict, records: list[dict] | None, per_query_path: Path) -> None:
    """The second stage into a run's scores: its block, the final ranking's server files
    (the first stage's, which `score` wrote under the ".stage1" stem, listed in the block)
    and its entry in every per-query record."""
    scored["rerank"] = block
    if block.get("server_files"):
        block["stage1_server_files"] = scored["server_files"]
        scored["server_files"] = block["server_files"]
    if records and scored.get("records"):
        for record, entry in zip(scored["records"], records):
            record["methods"].update(entry["methods"])
        write_records(per_query_path, scored["records"])


def run_loss(config: RunConfig):
    """The run's contrastive loss as a function of (query, target) embeddings."""
    from harness.training.losses import contrastive_loss

    return contrastive_loss(config.loss, config.temperature, config.hnnce_alpha, config.hnnce_beta)


def result_stem(config: RunConfig, seedless: bool = False) -> str:
    """The results file's name without suffix (`seedless`: the name over all seeds)."""
    identity = config.seedless_hash()[:8] if seedless else config.config_id()
    return f"{config.suite}_{config.split}_{config.backbone}_{identity}"


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
    protocol = PROTOCOLS.get(suite.scoring)  # how this suite is scored (harness/evaluation/protocols)
    rules = resolved(config.scoring_rules(), protocol)
    data, train_data = load_splits(config, suite)
    seed_everything(config.seed)
    model = Model(backbone_entry.load(config.load_options(), device), device, precision, config.eval_batch_size,
                  cache_dir() / "embeddings" if config.cache else None)
    with_text_length(model.backbone, suite)
    if not config.train:
        clip_stages.check_trained(model.backbone)
    # mixing scores as the protocol scores: the run's resolved token pooling
    mixing = dataclasses.replace(config.mixing(), token_pooling=rules.token_pooling) if config.mix else None
    if mixing:  # refuse what mixing does not cover, before any work
        modes.check(mixing, suite, data, model.backbone)
    if config.similarity:
        similarity_settings.check(config.similarity_settings(suite), suite, config.split)
    if config.rerank:
        check_second_stage(config.rerank_settings(), data)
    if data.candidates and (config.similarity or config.rerank):  # both score the whole gallery
        raise HarnessError(f"--similarity and --rerank score every query against the whole gallery; {config.suite} "
                           "ranks each query within its own candidates (per-query galleries): not supported yet")
    out_dir = Path(config.out)
    stem = result_stem(config)
    embeddings, training, gallery_model = fine_tune_and_embed(config, model, data, train_data, backbone_entry,
                                                              out_dir / "checkpoints" / stem)
    reranked = two_stage(config, model, suite, data, train_data, embeddings, protocol, rules, out_dir, stem) \
        if config.rerank else None
    if embeddings is None:  # a torchrun rank other than 0: its gallery shards of rank 0's scoring
        shard_scoring.serve()
        return None
    scored = score_run(config, model, suite, protocol, rules, data, embeddings, reranked, mixing, out_dir, stem)
    scored["gallery_model"] = gallery_model
    result = record(config, argv, data, protocol_fields(protocol, data, rules, scored), model, scored, training,
                    embeddings.timings, started)
    write_outputs(result, scored.get("records", []), data, out_dir, stem)
    return result


def score_run(config: RunConfig, model: Model, suite, protocol, rules, data: SplitData, embeddings, reranked,
              mixing, out_dir: Path, stem: str) -> dict:
    """Rank 0's scoring, mixing and similarity study, the other ranks serving their gallery
    shards (harness/evaluation/shard_scoring.py); each part records whether its gallery was
    sharded. The similarity study scores the whole gallery on rank 0 (dense score
    matrices, query banks), as does the re-ranking stage, which ran before."""
    with shard_scoring.session() as sharding:
        # a two-stage run's final server files take the run's stem, the first stage's its ".stage1" stem
        scored = score(protocol, data, embeddings, rules, out_dir, stem,
                       server_stem=f"{stem}.stage1" if reranked else None)
        scored["gallery_shards"] = sharding.record()
        if reranked:
            reranked[0]["gallery_shards"] = {"gallery_sharded": False, "ranks": sharding.world}  # on rank 0, whole
            with_second_stage(scored, *reranked, out_dir / f"{stem}.queries.jsonl")
        if config.save_embeddings:
            from harness.score import save_embeddings

            pair_ids = [q.pair_id for q in data.queries]
            say(f"embeddings: {save_embeddings(out_dir / f'{stem}.embeddings.safetensors', embeddings, pair_ids)}")
        if mixing:
            mark = sharding.mark()
            scored["mixing"] = mix_step(mixing, suite, data, embeddings, model.embed, out_dir, stem)
            scored["mixing"]["gallery_shards"] = sharding.record(mark)
        if config.similarity:
            mark = sharding.mark()
            with shard_scoring.whole_gallery():
                scored["similarity_study"] = similarity_step(config.similarity_settings(suite), suite, protocol, rules,
                                                             data, embeddings, model.embed, run_loss(config),
                                                             scored.get("mixing"))
            scored["similarity_study"]["gallery_shards"] = sharding.record(mark)
    return scored


def record(config: RunConfig, argv, data: SplitData, described: dict, model: Model, scored: dict,
           training: dict | None, embedding_timings: dict, started: float) -> dict:
    """The results file: what was computed, how (config, protocol as `described`, seed), and where."""
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
            **described,
            "caption_cleaning": data.provenance.get("caption_cleaning", "none"),
            "gallery": data.provenance.get("gallery", "split file"),
            "gallery_model": scored["gallery_model"],
            "fingerprint": fingerprint(data, described, model_fields(backbone, scored["similarity"]),
                                       model.precision, scored["gallery_model"]),
        },
        "backbone": {
            "name": config.backbone,
            "checkpoint": backbone.checkpoint_id,
            "checkpoint_sha256": backbone.checkpoint_sha256,
            "embed_dim": backbone.embed_dim,
            "image_size": backbone.image_size,
            "parameters": sum(p.numel() for p in backbone.model.parameters()),
        },
        **result_fields(scored),
        "training": training,
        "data": data.provenance,
        "timings": {"embedding": embedding_timings, "total_seconds": time.perf_counter() - started},
        "git": provenance.git_state(),
        "packages": provenance.package_versions(),
        "hardware": provenance.hardware(model.device),
    }
