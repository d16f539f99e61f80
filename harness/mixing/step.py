"""A run's mixing step: the `mixing` block of its results (chosen weights, their
metrics on the evaluation set, the sweep, the learned weights, the timings) and
the sweep's heat-map beside the results file."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from harness.core.provenance import describe_machine, hardware
from harness.evaluation.intervals import DESCRIPTION, bootstrap, paired
from harness.evaluation.protocols import ScoringRules
from harness.evaluation.token_pooling import pooled, recorded_rule
from harness.mixing.adapters import MIXERS, Mixer
from harness.mixing.grid import RULES, aggregate, best_index, mix, simplex_grid
from harness.mixing.learn import learn_weights
from harness.mixing.modes import HELDOUT, MODES, MixSettings, parse_weights, scoring_rules
from harness.mixing.parts import Part, heldout_halves, make_part, subsample
from harness.mixing.sweep import direct_metrics, direct_values, sweep_metrics
from harness.suites.base import SplitData
from harness.training.losses import contrastive_loss


def tuning_and_evaluation(settings: MixSettings, suite, data: SplitData, emb, embed: Callable[[SplitData], object],
                          mixer: Mixer, rules: ScoringRules) -> tuple[Part, str, Part, str]:
    """(tuning set, its rule, evaluation set, its rule): the two seeded halves of the
    evaluated split, or a (subsampled) tuning split embedded through `embed`; the
    embeddings pooled as the protocol pools them (`rules.token_pooling`)."""
    emb = pooled(emb, rules.token_pooling)
    if settings.tune_split == HELDOUT:
        tune_rows, eval_rows = heldout_halves(data, settings.seed)
        order = f"{HELDOUT}: pair ids ordered by sha256('{settings.seed}:<pair id>')"
        return (make_part("tuning", data, emb, mixer.merge, tune_rows), f"{order}, the first half",
                make_part("evaluation", data, emb, mixer.merge, eval_rows), f"{order}, the second half")
    tune_data, tune_rule = subsample(suite.load(settings.tune_split), settings.tune_max_queries, settings.seed)
    tune_emb = pooled(embed(tune_data), rules.token_pooling)
    return (make_part("tuning", tune_data, tune_emb, mixer.merge), tune_rule,
            make_part("evaluation", data, emb, mixer.merge), "the whole split")


F_ALONE = "f alone"  # the row every other row is paired with (added first)


class MixingBlock:
    """The block being built: one row per method, each with its tuning and evaluation
    metrics, scored by the run's protocol (`mixer`, under `rules`)."""

    def __init__(self, settings: MixSettings, mixer: Mixer, rules: ScoringRules, tune: Part, tune_rule: str,
                 evaluation: Part, eval_rule: str):
        self.settings, self.mixer, self.rules, self.tune, self.evaluation = settings, mixer, rules, tune, evaluation
        tuned = set(mixer.metrics(tune))  # a tiny split's half may lack a FashionIQ category
        self.metrics = [m for m in mixer.metrics(evaluation) if m in tuned]
        self.f_alone: dict[str, torch.Tensor] | None = None  # per-query values the rows are paired with
        self.block: dict = {
            "modes": list(settings.modes),
            "scoring": mixer.name,
            "metrics": self.metrics,
            "heatmap_metrics": [m for m in mixer.panels if m in self.metrics],
            "tuning": tune.describe(tune_rule),
            "evaluation": evaluation.describe(eval_rule),
            "parts": {"w0": "image-only q", "w1": "text-only t", "w2": "composed f(q,t)"},
            "rows": [],
            "intervals": f"on the evaluation set: {DESCRIPTION}; minus_f_alone is paired, on the same queries",
            "timings": {},
        }

    def _kept(self, values: dict) -> dict:
        return {m: values[m] for m in self.metrics}

    def add_row(self, method: str, weights: Sequence[float] | None = None, rule: str | None = None, **extra):
        def query(part: Part) -> torch.Tensor:
            return mix(part.parts, weights) if weights is not None else aggregate(part.parts, rule)

        scoring = (self.mixer, self.rules)
        mixed = query(self.evaluation)
        values = self._kept(direct_values(self.evaluation, mixed, *scoring))
        if method == F_ALONE:
            self.f_alone = values
        self.block["rows"].append({
            "method": method,
            "weights": None if weights is None else [round(float(w), 6) for w in weights],
            **extra,
            "tuning": self._kept(direct_metrics(self.tune, query(self.tune), *scoring)),
            "metrics": self._kept(direct_metrics(self.evaluation, mixed, *scoring)),
            "interval": bootstrap(values),
            **({"minus_f_alone": paired(values, self.f_alone)} if self.f_alone is not None else {}),
        })

    def add_sweep(self) -> None:
        """Every triple of the grid on both sets; each metric's best on tuning as a row."""
        grid = simplex_grid(self.settings.step)
        swept = {}
        for name, part in (("tuning", self.tune), ("evaluation", self.evaluation)):
            timed = time.perf_counter()
            swept[name] = self._kept(sweep_metrics(part, grid, self.mixer, self.rules))
            self.block["timings"][f"sweep_{name}_seconds"] = time.perf_counter() - timed
        self.block["sweep"] = {
            "step": self.settings.step, "triples": grid.shape[0],
            "order": "w0 slowest, then w1; a metric's best is the first triple with its highest tuning value",
            "weights": [[round(w, 6) for w in row] for row in grid.tolist()], **swept,
        }
        for metric in self.metrics:
            best = best_index(swept["tuning"][metric])
            self.add_row(f"best {metric} on tuning", grid[best].tolist(), chosen_for=metric, sweep_index=best)

    def add_learned(self) -> None:
        s = self.settings
        learned = learn_weights(self.tune, contrastive_loss(s.loss, s.temperature, s.hnnce_alpha, s.hnnce_beta),
                                s.seed, reference=self.rules.reference)
        learned.update(loss=s.loss, temperature=s.temperature, alpha=s.hnnce_alpha, beta=s.hnnce_beta)
        self.block["learned"] = learned
        self.block["timings"]["learn_seconds"] = learned["seconds"]
        self.add_row(f"learned ({s.loss})", learned["weights"])


def run_mixing(settings: MixSettings, suite, data: SplitData, emb, embed: Callable[[SplitData], object]) -> dict:
    """The `mixing` block of a run's results. `embed(split_data)` returns (cached)
    embeddings of another split, for --tune-split train; `emb` as the run embedded
    the split (multi-vector features are pooled here as its protocol pooled them)."""
    started = time.perf_counter()
    mixer = MIXERS.get(suite.scoring)
    rules = scoring_rules(settings, suite.scoring)
    mixing = MixingBlock(settings, mixer, rules, *tuning_and_evaluation(settings, suite, data, emb, embed, mixer, rules))
    if recorded_rule(emb, rules.token_pooling):
        mixing.block["token_pooling"] = rules.token_pooling
    for method, weights in ((F_ALONE, (0, 0, 1)), ("q alone", (1, 0, 0)), ("t alone", (0, 1, 0))):
        mixing.add_row(method, weights)
    if "sweep" in settings.modes:
        mixing.add_sweep()
    if "learn" in settings.modes:
        mixing.add_learned()
    for token in settings.modes:
        if token not in MODES:
            mixing.add_row(f"fixed {token}", parse_weights(token))
    for rule in RULES:
        if rule in settings.modes:
            mixing.add_row(f"element-wise {rule}", rule=rule)
    mixing.block["timings"]["total_seconds"] = time.perf_counter() - started
    return mixing.block


def mix_step(settings: MixSettings, suite, data: SplitData, emb, embed: Callable[[SplitData], object],
             out_dir: Path, stem: str) -> dict:
    """run_mixing, plus the sweep's heat-map PNG written beside the results (named in
    the block by file name, relative to the results file)."""
    from harness.mixing.heatmap import title_of, write_heatmap

    block = run_mixing(settings, suite, data, emb, embed)
    block["hardware"] = hardware(torch.device("cpu"))  # mixing runs on the CPU copies
    block["load_average_1min"] = os.getloadavg()[0]  # other work on the machine slows the timings
    if "sweep" in block:
        path = Path(out_dir) / f"{stem}.mix_heatmap.png"
        title = title_of({"suite": settings.suite, "split": settings.split, "backbone": settings.backbone,
                          "tune_split": settings.tune_split}, block)
        write_heatmap(block, path, title, describe_machine(block["hardware"]))
        block["heatmap"] = path.name
    return block
