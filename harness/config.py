"""RunConfig: one typed config per run, hashed into every result."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from dataclasses import dataclass

from backbones.base import LoadOptions
from harness.core.errors import HarnessError
from harness.core.precision import PRECISIONS, TRAIN_PRECISIONS
from harness.evaluation.protocols.base import ScoringRules
from harness.mixing.modes import MixSettings, parse_modes
from harness.rerank import RERANKERS, RerankSettings
from harness.rerank.base import NO_FUSION, TUNED_FUSION
from harness.similarity.bank import resolve_bank
from harness.similarity.settings import SimilaritySettings, parse_methods
from harness.suites import SUITES
from harness.training.iterate import ITERATE
from harness.training.losses import LOSSES
from harness.training.recipes import RECIPES, RERANK_LR, SCHEDULES, default_recipe
from harness.training.settings import TrainSettings

_TINY = RECIPES["tiny"]
FROM_RANDOM_WEIGHTS = ("blip-tiny", "clip-tiny")  # backbones that start untrained without --checkpoint


@dataclass(frozen=True)
class RunConfig:
    backbone: str = "blip-tiny"
    suite: str = "shapes"
    split: str = "val"
    train_split: str = "train"
    data_root: str | None = None
    checkpoint: str | None = None
    checkpoint_format: str | None = None
    tokenizer: str | None = None
    model_config: str | None = None
    out: str = "results"
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    threads: int | None = None
    # fine-tuning (values from the recipe unless given; the defaults are the tiny recipe's)
    train: bool = False
    recipe: str = "tiny"
    epochs: int = _TINY["epochs"]
    batch_size: int = _TINY["batch_size"]
    lr: float = _TINY["lr"]
    weight_decay: float = _TINY["weight_decay"]
    warmup_steps: int = _TINY["warmup_steps"]
    grad_clip: float = _TINY["grad_clip"]
    temperature: float = _TINY["temperature"]
    hnnce_alpha: float = _TINY["hnnce_alpha"]
    hnnce_beta: float = _TINY["hnnce_beta"]
    train_vision: bool = _TINY["train_vision"]
    max_train_queries: int | None = None
    iterate: str = "rows"  # "rows": every annotation row per epoch; "targets": one row per target (CoVR's pth2)
    # Added with the DeepSpeed / gradient-caching work. A field at its default is
    # left out of the hash (see ADDED_FIELDS), so runs that do not use them keep
    # the hashes they had before.
    loss: str = "hn-nce"  # or "covr-compat": CoVR's released HN-NCE (see harness/training/losses.py)
    schedule: str = "step"  # "step": warm-up then cosine per step; "epoch": cosine per epoch (CoVR)
    deepspeed: str | None = None  # ZeRO config JSON; None: the plain torch engine
    grad_cache_chunk: int | None = None  # per-rank chunk for gradient caching; None: off
    checkpoint_every: int = 0  # also write the training state every N steps (0: epoch ends only)
    resume: bool = False  # continue from the training state of this configuration
    # evaluation
    eval_batch_size: int = 256
    cache: bool = True  # reuse / store split embeddings in $COIR_BENCH_CACHE/embeddings
    convention: str = "covr"
    tie_rule: str = "pessimistic"
    caption_cleaning: str = "covr"  # harness/suites/captions.py: CoVR's pre_caption, or "none"
    gallery: str = "split"  # "split": the split file's images (official); "folder": every image of its folder
    gallery_model: str = "auto"  # whose features the gallery is scored with (harness/evaluation/fixed_gallery.py)
    reference: str = "remove"  # where the reference stands in its ranking (harness/evaluation/reference_rule.py)
    token_pooling: str = "auto"  # multi-vector features: max or mean (harness/evaluation/token_pooling.py)
    query_template: str = "caption"  # CIRCO's query text (harness/suites/circo.py)
    save_embeddings: bool = False  # also write <run>.embeddings.safetensors (harness/score.py's format)
    # video suites (harness/suites/webvid_covr.py): the query's frame, how a target's frames pool
    video_query_frame: str = "middle"
    video_pooling: str = "query"
    text_length: int | None = None  # dense-webvid-covr: evaluation tokens (None: the suite's, 64)
    train_precision: str = "fp32"  # the recipe's fine-tuning precision under --precision auto (harness/core/precision.py)
    composer: str | None = None  # CLIP backbones: the composed query's rule (backbones/composers); None: sum
    # mixed embeddings (harness/mixing/__init__.py); at these defaults left out of the hash
    mix: tuple[str, ...] = ()  # modes: sweep, learn, median, max, "w0,w1,w2"; () = no mixing
    mix_step: float = 0.05  # simplex grid step of --mix sweep (0.05: 231 triples)
    tune_split: str = "heldout-half"  # where mixing weights are chosen: a seeded half of the split, or a split
    tune_max_queries: int | None = 5000  # cap on a tuning split's queries (seeded subsample)
    # similarity methods (harness/similarity); at these defaults left out of the hash
    similarity: tuple[str, ...] = ()  # method names; () = cosine only, no study
    similarity_bank: str = "auto"  # the hubness corrections' query bank: a split, auto (train, else another), none
    similarity_bank_max_queries: int | None = 2000  # cap on the bank's queries (seeded subsample)
    # two-stage retrieval (harness/rerank); at these defaults left out of the hash
    rerank: str | None = None  # re-ranker name; None = the first stage only
    rerank_k: int = 50  # candidates per query
    rerank_checkpoint: str | None = None  # a directory a re-ranker saved; None: the backbone's weights
    rerank_fusion: str = "none"  # "none", "tuned" or an alpha in [0, 1]
    rerank_train: bool | None = None  # None: as --train, unless a re-ranker checkpoint is given
    rerank_negatives: int = 7
    rerank_epochs: int = 2
    rerank_batch_size: int = 32
    rerank_lr: float | None = None  # None: the recipe's (harness/training/recipes.py RERANK_LR)

    @classmethod
    def from_cli(cls, args: argparse.Namespace) -> RunConfig:
        return cls.resolve({k: v for k, v in vars(args).items() if v is not None and k in _FIELDS})

    @classmethod
    def resolve(cls, given: dict) -> RunConfig:
        """Fill what the user left unset from the recipe and the backbone's needs."""
        unknown = set(given) - _FIELDS
        if unknown:
            raise TypeError(f"unknown RunConfig fields: {', '.join(sorted(unknown))}")
        backbone = given.get("backbone", cls.backbone)
        composer = check_composer(backbone, given.get("composer"))
        recipe = given.get("recipe") or default_recipe(backbone, composer)
        if recipe not in RECIPES:
            raise HarnessError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
        values = {**RECIPES[recipe], **given, "recipe": recipe, "composer": composer}
        if "split" not in given:  # the suite's own (val; WebVid-CoVR's test, which has targets)
            values["split"] = SUITES.get(values.get("suite", cls.suite)).default_split
        if "reference" not in given:  # the suite's own rule where its peers' code differs (EgoCVR: keep)
            values["reference"] = getattr(SUITES.get(values.get("suite", cls.suite)), "default_reference", "remove")
        if "train" not in given:
            # A randomly initialised backbone is meaningless untrained, as is an untrained composer.
            values["train"] = (backbone in FROM_RANDOM_WEIGHTS or composer_trains(composer)) \
                and not values.get("checkpoint")
        if values["train"] and composer and not (composer_trains(composer) or (
                backbone in FROM_RANDOM_WEIGHTS and not values.get("checkpoint"))):
            raise HarnessError(f"--train: composer {composer!r} has no parameters and {backbone} is pretrained: "
                               "nothing to train (the combiner and pic2word composers train)")
        if values.get("precision", "auto") not in PRECISIONS:
            raise HarnessError(f"--precision must be one of {', '.join(PRECISIONS)}")
        if values.get("train_precision", "fp32") not in TRAIN_PRECISIONS:
            raise HarnessError(f"train_precision must be one of {', '.join(TRAIN_PRECISIONS)}")
        if values.get("loss", "hn-nce") not in LOSSES:
            raise HarnessError(f"--loss must be one of {', '.join(LOSSES)}")
        if values.get("schedule", "step") not in SCHEDULES:
            raise HarnessError(f"--schedule must be one of {', '.join(SCHEDULES)}")
        if values.get("iterate", "rows") not in ITERATE:
            raise HarnessError(f"--iterate must be one of {', '.join(ITERATE)}")
        if values.get("deepspeed") in ("none", ""):
            values["deepspeed"] = None  # --deepspeed none: the plain engine despite the recipe
        if values.get("mix"):
            values["mix"] = parse_modes(values["mix"])
        if values.get("similarity"):
            values["similarity"] = parse_methods(values["similarity"])
        if values.get("rerank") is None:
            given_alone = [f"--{k.replace('_', '-')}" for k, v in given.items()
                           if k.startswith("rerank_") and v != ADDED_FIELDS[k]]
            if given_alone:
                raise HarnessError(f"{', '.join(given_alone)} set(s) the second stage: add --rerank NAME")
        else:
            if values.get("rerank_train") is None:
                values["rerank_train"] = bool(values["train"]) and not values.get("rerank_checkpoint")
            check_rerank_options(values)
            if values.get("rerank_lr") is None:
                values["rerank_lr"] = RERANK_LR.get(recipe)  # None: the re-ranker refuses the backbone
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, recorded: dict) -> RunConfig:
        """The config a results file records (fields added later take their defaults)."""
        values = {k: v for k, v in recorded.items() if k in _FIELDS}
        for name in ("mix", "similarity"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)

    def training(self) -> TrainSettings:
        return TrainSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TrainSettings)})

    def mixing(self) -> MixSettings:
        return MixSettings(modes=self.mix, step=self.mix_step, tune_split=self.tune_split,
                           tune_max_queries=self.tune_max_queries, seed=self.seed, convention=self.convention,
                           tie_rule=self.tie_rule, loss=self.loss, temperature=self.temperature,
                           hnnce_alpha=self.hnnce_alpha, hnnce_beta=self.hnnce_beta, suite=self.suite,
                           split=self.split, backbone=self.backbone, reference=self.reference)

    def similarity_settings(self, suite) -> SimilaritySettings:
        """The study's settings, the bank's split resolved for `suite` (harness/similarity/bank.py)."""
        return SimilaritySettings(methods=self.similarity, bank=resolve_bank(self.similarity_bank, suite, self.split),
                                  bank_max_queries=self.similarity_bank_max_queries, seed=self.seed)

    def rerank_settings(self) -> RerankSettings:
        return RerankSettings(reranker=self.rerank, k=self.rerank_k, checkpoint=self.rerank_checkpoint,
                              fusion=self.rerank_fusion, train=bool(self.rerank_train), negatives=self.rerank_negatives,
                              epochs=self.rerank_epochs, batch_size=self.rerank_batch_size, lr=self.rerank_lr,
                              seed=self.seed)

    def scoring_rules(self) -> ScoringRules:
        return ScoringRules(convention=self.convention, tie_rule=self.tie_rule, reference=self.reference,
                            token_pooling=self.token_pooling)

    def seedless_hash(self) -> str:
        """`hash` with the seed set aside: the same for every seed of one recipe (and
        unlike any one seed's)."""
        return dataclasses.replace(self, seed=None).hash()

    def suite_options(self, suite_cls) -> dict:
        """The RunConfig fields a suite takes (its `options`: the video suites' frame
        rules); one set away from its default for a suite that does not take it is an error."""
        taken = getattr(suite_cls, "options", ())
        for name in SUITE_OPTIONS:
            if name not in taken and getattr(self, name) != ADDED_FIELDS[name]:
                raise HarnessError(f"--{name.replace('_', '-')} applies to {SUITE_OPTIONS[name]}, "
                                   f"not {self.suite}: leave it out")
        return {name: getattr(self, name) for name in taken}

    def load_options(self) -> LoadOptions:
        return LoadOptions(self.checkpoint, self.checkpoint_format, self.tokenizer, self.model_config, self.seed,
                           self.composer)

    def config_id(self) -> str:
        """Short, filesystem-safe name of this configuration."""
        return self.hash()[:8]

    def hash(self) -> str:
        """Identity of what is computed: everything but where results are written and
        how often the run checkpoints; the DeepSpeed config by its content."""
        identity = {k: v for k, v in self.to_dict().items() if k not in NOT_HASHED}
        for name, default in ADDED_FIELDS.items():
            if identity.get(name) == default:
                del identity[name]
        if self.deepspeed:
            from harness.training.deepspeed_engine import config_sha256

            identity["deepspeed"] = "sha256:" + config_sha256(self.deepspeed)  # content, not path
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


_FIELDS = {f.name for f in dataclasses.fields(RunConfig)}
NOT_HASHED = ("out", "threads", "cache", "checkpoint_every", "resume", "save_embeddings")
# Fields added after results were published: omitted from the hash at these values.
ADDED_FIELDS = {"loss": "hn-nce", "schedule": "step", "deepspeed": None, "grad_cache_chunk": None,
                "mix": (), "mix_step": 0.05, "tune_split": "heldout-half", "tune_max_queries": 5000,
                "video_query_frame": "middle", "video_pooling": "query", "text_length": None, "iterate": "rows", "reference": "remove",
                "composer": None, "train_precision": "fp32",
                "token_pooling": "auto", "query_template": "caption", "similarity": (), "similarity_bank": "auto",
                "similarity_bank_max_queries": 2000, "rerank": None, "rerank_k": 50, "rerank_checkpoint": None,
                "rerank_fusion": "none", "rerank_train": None, "rerank_negatives": 7, "rerank_epochs": 2,
                "rerank_batch_size": 32, "rerank_lr": None}
# Fields only some suites take (a suite's `options`), and which.
SUITE_OPTIONS = {"video_query_frame": "video suites (webvid-covr)", "video_pooling": "video suites (webvid-covr)",
                 "query_template": "circo", "text_length": "dense-webvid-covr"}


def check_composer(backbone: str, composer: str | None) -> str | None:
    """The composer a run uses: None for backbones with their own fusion (BLIP), the
    given one or `sum` for CLIP backbones."""
    from backbones import BACKBONES
    from backbones.composers import COMPOSERS, DEFAULT_COMPOSER

    takes = getattr(BACKBONES.get(backbone), "composers", False)
    if composer is None:
        return DEFAULT_COMPOSER if takes else None
    if not takes:
        raise HarnessError(f"--composer applies to CLIP backbones; {backbone} composes its queries itself: leave it out")
    COMPOSERS.get(composer)  # an unknown name is an error with close matches
    return composer


def composer_trains(composer: str | None) -> bool:
    from backbones.composers import COMPOSERS

    return composer is not None and COMPOSERS.get(composer).trains_on is not None


def check_rerank_options(values: dict) -> None:
    """--rerank and its options, checked before any work."""
    RERANKERS.get(values["rerank"])  # an unknown name is an error with close matches
    fusion = values.get("rerank_fusion", NO_FUSION)
    if fusion not in (NO_FUSION, TUNED_FUSION):
        try:
            alpha = float(fusion)
        except ValueError:
            alpha = -1.0
        if not 0.0 <= alpha <= 1.0:
            raise HarnessError(f"--rerank-fusion takes none, tuned or an alpha between 0 and 1, not {fusion!r}")
    for name in ("rerank_k", "rerank_negatives", "rerank_epochs", "rerank_batch_size"):
        if values.get(name, 1) < 1:
            raise HarnessError(f"--{name.replace('_', '-')} must be at least 1, not {values[name]}")
    if values["rerank_train"] and values.get("rerank_negatives", 7) >= values.get("rerank_k", 50):
        raise HarnessError("--rerank-negatives must be below --rerank-k: the negatives come from the top K")
