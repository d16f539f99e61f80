"""RunConfig: one typed config per run, hashed into every result."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from dataclasses import dataclass

from backbones.base import LoadOptions
from harness.errors import HarnessError
from harness.recipes import RECIPES, default_recipe

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_TINY = RECIPES["tiny"]


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
    # evaluation
    eval_batch_size: int = 256
    cache: bool = True  # reuse / store split embeddings in $COIR_BENCH_CACHE/embeddings
    convention: str = "covr"
    tie_rule: str = "pessimistic"

    @classmethod
    def from_cli(cls, args: argparse.Namespace) -> RunConfig:
        return cls.resolve({k: v for k, v in vars(args).items() if v is not None and k in _FIELDS})

    @classmethod
    def resolve(cls, given: dict) -> RunConfig:
        """Fill what the user left unset from the recipe and the backbone's needs."""
        unknown = set(given) - _FIELDS
        if unknown:
            raise TypeError(f"unknown RunConfig fields: {', '.join(sorted(unknown))}")
        recipe = given.get("recipe") or default_recipe(given.get("backbone", cls.backbone))
        if recipe not in RECIPES:
            raise HarnessError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
        values = {**RECIPES[recipe], **given, "recipe": recipe}
        if "train" not in given:
            # A randomly initialised backbone is meaningless untrained.
            values["train"] = values.get("backbone", cls.backbone) == "blip-tiny" and not values.get("checkpoint")
        if values.get("precision", "auto") not in PRECISIONS:
            raise HarnessError(f"--precision must be one of {', '.join(PRECISIONS)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_options(self) -> LoadOptions:
        return LoadOptions(self.checkpoint, self.checkpoint_format, self.tokenizer, self.model_config, self.seed)

    def config_id(self) -> str:
        """Short, filesystem-safe name of this configuration."""
        return self.hash()[:8]

    def hash(self) -> str:
        """Identity of what is computed: everything but where results are written."""
        identity = {k: v for k, v in self.to_dict().items() if k not in ("out", "threads", "cache")}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


_FIELDS = {f.name for f in dataclasses.fields(RunConfig)}
