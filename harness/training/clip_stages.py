"""Training a CLIP backbone in the stages its composer needs (backbones/clip.py):

1. contrastive pre-training, for clip-tiny from random weights only: image against
   caption on the generated image-caption pairs (harness/suites/image_captions.py),
   InfoNCE in both directions with every CLIP weight trained (recipe `clip-tiny`,
   harness/training/recipes.py). The result is cached by content
   ($COIR_BENCH_CACHE/clip-pretrained/<key>: the model's config, the settings, the
   pairs and this module's version), so every run of one seed shares it.
2. the composer, CLIP frozen: `combiner` on the suite's training triplets (CLIP4Cir),
   `pic2word` on images alone (Pic2Word). A composer loaded trained (a --checkpoint
   a run saved) is not trained again.

The results' "training" block is the last stage's record, with every stage's under
"stages".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch

from backbones.checkpoints import directory_sha256
from backbones.composers import COMPOSERS
from harness.core.atomic import write_text
from harness.core.errors import HarnessError
from harness.core.paths import cache_dir
from harness.core.progress import say
from harness.suites.base import SplitData
from harness.suites.image_captions import ImageCaptionSpec, load_pairs
from harness.training.image_pairs import image_pairs
from harness.training.loop import fine_tune
from harness.training.recipes import RECIPES
from harness.training.settings import TrainSettings

PRETRAINING_VERSION = 1  # bump when the pre-training's code changes what it computes
RECORD = "coir_pretraining.json"
PAIRS = ImageCaptionSpec()  # the generated pairs pre-training reads


def pretraining_key(backbone, settings: TrainSettings, spec: ImageCaptionSpec, precision: str) -> str:
    identity = {"version": PRETRAINING_VERSION, "model": backbone.clip.config.to_dict(),
                "vocabulary": sorted(backbone.tokenizer.get_vocab().items()), "settings": dataclasses.asdict(settings),
                "pairs": dataclasses.asdict(spec), "precision": precision, "weights": backbone.checkpoint_id,
                "start": backbone.weights_sha256}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pretrained(backbone, settings: TrainSettings, device: torch.device, precision: str,
               spec: ImageCaptionSpec = PAIRS) -> tuple[Path, dict]:
    """(the pre-trained checkpoint's directory, its training record), trained now or
    found in the cache."""
    directory = cache_dir() / "clip-pretrained" / pretraining_key(backbone, settings, spec, precision)
    if (directory / RECORD).is_file():
        say(f"contrastive pre-training: found in the cache ({directory})")
        return directory, {**json.loads((directory / RECORD).read_text()), "cached": True}
    pairs = load_pairs(spec)
    say(f"contrastive pre-training of {backbone.name} on {len(pairs.queries)} generated image-caption pairs "
        f"({settings.epochs} epochs, batch {settings.batch_size})")
    backbone.stage = "contrastive"
    try:
        record = fine_tune(backbone, pairs, settings, device, precision, directory).to_dict()
    finally:
        backbone.stage = "composer"
    record["trained_on"] = f"image-captions ({len(pairs.queries)} pairs, seed {spec.seed})"
    write_text(directory / RECORD, json.dumps(record, indent=2))  # last: marks the checkpoint complete
    return directory, record


def train_stages(backbone, entry, options, composer_data, settings: TrainSettings, pretraining: TrainSettings,
                 device: torch.device, precision: str, checkpoint_dir: Path):
    """(the trained backbone, the results' "training" block). `composer_data()` gives
    the split the composer trains on; `pretraining`: the settings of stage 1."""
    stages = {}
    if backbone.checkpoint_id == "random-init":
        directory, stages["pretraining"] = pretrained(backbone, pretraining, device, precision)
        backbone = entry.load(dataclasses.replace(options, checkpoint=str(directory)), device)
    composer = backbone.composer
    if composer.trains_on is not None and not getattr(composer, "trained", False):
        data: SplitData = composer_data(composer.trains_on)
        say(f"training the {composer.name} composer on {data.suite}/{data.split} ({len(data.queries)} rows, "
            f"{settings.epochs} epochs, batch {settings.batch_size}; {backbone.name} frozen)")
        record = fine_tune(backbone, data, settings, device, precision, checkpoint_dir).to_dict()
        record["trained_on"] = f"{data.suite}/{data.split}"
        stages["composer"] = record
        composer.trained = True
        backbone.checkpoint_id = str(checkpoint_dir)
        backbone.checkpoint_sha256 = directory_sha256(checkpoint_dir)
    if not stages:
        return backbone, None
    last = stages.get("composer") or stages["pretraining"]
    return backbone, {**last, "stages": stages}


def needs_train_split(train: bool, backbone: str, composer: str | None) -> bool:
    """Whether a run trains on the suite's training split: every fine-tuning, but of the
    CLIP composers only those that train on a suite's triplets or images (clip-tiny's
    pre-training, and its pic2word, train on the generated image-caption pairs)."""
    if not train:
        return False
    if composer is None:
        return True
    trains_on = COMPOSERS.get(composer).trains_on
    return trains_on == "triplets" or (trains_on == "images" and backbone != "clip-tiny")


def composer_data(train_data: SplitData | None):
    """What a composer trains on, by its `trains_on`: the suite's triplets, or images
    alone (Pic2Word): the training split's images, or without one (clip-tiny) the
    generated image-caption pairs' images, which it was pre-trained on."""
    def data(trains_on: str) -> SplitData:
        if trains_on == "triplets":
            return train_data
        return image_pairs(load_pairs() if train_data is None else train_data)

    return data


def pretraining_settings(run_settings: TrainSettings, composer: str | None, seed: int) -> TrainSettings:
    """Stage 1's settings: the run's own when pre-training is all it trains (a composer
    without parameters), else the `clip-tiny` recipe's at the run's seed."""
    if composer is None or COMPOSERS.get(composer).trains_on is None:
        return run_settings
    recipe = {k: v for k, v in RECIPES["clip-tiny"].items() if k != "deepspeed"}
    return TrainSettings(**recipe, max_train_queries=None, loss="hn-nce", deepspeed=None, grad_cache_chunk=None,
                         checkpoint_every=0, resume=False, seed=seed)


def check_trained(backbone) -> None:
    """A composer with parameters evaluates only trained: refused before any embedding."""
    composer = getattr(backbone, "composer", None)
    if composer is not None and composer.module is not None and not getattr(composer, "trained", False):
        raise HarnessError(f"the {composer.name} composer has parameters and none are trained: add --train, or "
                           f"give --checkpoint a directory a {composer.name} run saved")
