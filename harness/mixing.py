"""The mixed-embedding extension: m(q, t) = w0·q + w1·t + w2·f(q, t), weights on the
simplex, q the reference image's embedding, t the caption's, f the composed query
(each L2-normalised first), and two rules that aggregate the three element-wise
instead: their median and their maximum.

    python -m harness.run --mix sweep learn median max      # every mode, one table
    python -m harness.run --mix 0.1,0.1,0.8                  # fixed weights

Modes (`--mix`, any number of them):
- `sweep`: every triple of the simplex grid of step `--mix-step` (0.05: 231 triples),
  ranked in one pass by `kernels.mixed_rank_counts`; each metric's best triple on the
  tuning split is reported on the evaluation split.
- `learn`: w = softmax(theta), theta fitted by the run's contrastive loss (HN-NCE, or
  InfoNCE with beta 0; harness/losses.py) on the tuning split's cached embeddings,
  query m against its target, in-batch negatives; a few seconds on CPU.
- `w0,w1,w2`: fixed weights (non-negative, summing to 1).
- `median`, `max`: element-wise median / maximum of the normalised q, t, f.

Honest protocol: weights are chosen on a tuning split and reported on a disjoint
evaluation set. `--tune-split heldout-half` (default) splits the evaluated split's
queries in two by a seeded hash of their pair ids (rule, sizes and the hashes of
both id lists are recorded); both halves rank against the whole gallery.
`--tune-split train` (or any other split of the suite) tunes on that split,
subsampled to `--tune-max-queries` queries (seeded, recorded), and reports on the
whole evaluated split.

Mixing is defined for single-vector features only. BLIP-2's features are 32 tokens
scored by the max over token pairs, and max-sim is not linear: the score of
w0·q + w1·t + w2·f is not w0·s(q) + w1·s(t) + w2·s(f), so no triple can be ranked from
the three parts' scores (each would need its own max-sim scoring of the gallery,
231 of them for a sweep), and q (32 image tokens), t (one text vector) and f
(32 composed tokens) are not one kind of vector to average. A BLIP-2 run with --mix
stops before embedding, saying so.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

import kernels
from harness import distributed
from harness.errors import HarnessError
from harness.losses import contrastive_loss
from harness.metrics import (
    RECALL_KS,
    SUBSET_KS,
    QueryLabels,
    build_labels,
    cirr_metrics,
    metrics_from_counts,
    subset_scores_of,
)
from harness.suites.base import SplitData

MODES = ("sweep", "learn", "median", "max")
RULES = ("median", "max")
HELDOUT = "heldout-half"
METRICS = [f"R@{k}" for k in RECALL_KS] + [f"Rsubset@{k}" for k in SUBSET_KS] + ["Avg"]
PARTS = ("image", "text", "composed")  # SplitEmbeddings attributes of q, t, f
# --mix learn: Adam on theta (3 numbers) from uniform weights, full batches of at most
# LEARN_BATCH tuning pairs (a fresh seeded sample each step when there are more).
LEARN_STEPS = 200
LEARN_LR = 0.05
LEARN_BATCH = 1024
SWEEP_CHUNK = 512  # weight triples per call (memory: chunk x queries x members); 231 in one


# ----------------------------------------------------------------- modes and checks


def parse_modes(tokens: Sequence[str]) -> tuple[str, ...]:
    """The --mix tokens, checked: a mode name or a weight triple "w0,w1,w2"."""
    out = []
    for token in tokens:
        token = token.strip()
        if token not in MODES:
            parse_weights(token)  # raises on anything else
        out.append(token)
    return tuple(dict.fromkeys(out))


def parse_weights(token: str) -> tuple[float, float, float]:
    try:
        weights = tuple(float(x) for x in token.split(","))
    except ValueError:
        weights = ()
    if len(weights) != 3:
        raise HarnessError(
            f"--mix {token!r}: expected one of {', '.join(MODES)} or three weights w0,w1,w2 "
            "(image q, text t, composed f), e.g. 0.1,0.1,0.8"
        )
    if min(weights) < 0 or abs(sum(weights) - 1) > 1e-6:
        raise HarnessError(f"--mix {token!r}: weights must be non-negative and sum to 1 (the simplex)")
    return weights  # type: ignore[return-value]


def check(config, suite, data: SplitData, backbone) -> None:
    """Before any embedding: refuse what mixing does not cover, saying why."""
    if not config.mix:
        return
    if getattr(suite, "scoring", "cirr") != "cirr":
        raise HarnessError(f"--mix applies to suites scored with the CIRR protocol (cirr, shapes), "
                           f"not {config.suite} ({suite.scoring})")
    if getattr(backbone, "multi_vector", False) or getattr(backbone, "query_multi_vector", False):
        raise HarnessError(
            f"--mix is defined for single-vector embeddings; {config.backbone} features are "
            "multi-vector (32 tokens, max-sim scoring), under which a mixed score is not the "
            "weighted sum of the parts' scores (see harness/mixing.py)"
        )
    if not data.has_targets:
        raise HarnessError(f"--mix needs a split with targets; {config.suite}/{config.split} has none")
    if config.tune_split == config.split:
        raise HarnessError(f"--tune-split {config.split} is the evaluated split: use {HELDOUT} "
                           "to tune on a held-out half of it")
    if config.tune_split != HELDOUT and distributed.launched_by_torchrun():
        raise HarnessError(f"--tune-split {config.tune_split} under torchrun is not supported: "
                           f"use {HELDOUT}, or run the mixing without torchrun (embeddings are cached)")
    if config.tune_split != HELDOUT and config.tune_split not in getattr(suite, "splits", ()):
        raise HarnessError(f"--tune-split must be {HELDOUT} or a split of {config.suite} "
                           f"({', '.join(suite.splits)}), not {config.tune_split!r}")
    simplex_grid(config.mix_step)


# ----------------------------------------------------------------- grid and rules


def simplex_grid(step: float = 0.05) -> torch.Tensor:
    """Every (w0, w1, w2) with each weight a multiple of `step` summing to 1, (W, 3),
    w0 slowest: 231 triples at step 0.05."""
    n = round(1 / step)
    if n < 1 or abs(n * step - 1) > 1e-9:
        raise HarnessError(f"--mix-step must divide 1 (0.05, 0.1, 0.25 ...), not {step}")
    rows = [(i, j, n - i - j) for i in range(n + 1) for j in range(n + 1 - i)]
    return torch.tensor(rows, dtype=torch.float64).div(n).float()


def normalized(tensor: torch.Tensor) -> torch.Tensor:
    return F.normalize(tensor.float(), dim=-1)


def aggregate(parts: Sequence[torch.Tensor], rule: str) -> torch.Tensor:
    """Element-wise median or maximum of the normalised parts, L2-normalised, (Q, D)."""
    stacked = torch.stack([normalized(p) for p in parts])
    if rule == "median":
        values = stacked.median(dim=0).values  # the middle value of three
    elif rule == "max":
        values = stacked.amax(dim=0)
    else:
        raise ValueError(f"unknown aggregation rule {rule!r}; choose from {', '.join(RULES)}")
    return normalized(values)


def mix(parts: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """normalize(w0·q + w1·t + w2·f) of the normalised parts, (Q, D)."""
    return normalized(sum(w * normalized(p) for w, p in zip(weights, parts)))


# ----------------------------------------------------------------- scoring


@dataclass
class Part:
    """The queries of one tuning or evaluation set: their labels and normalised
    (q, t, f), against the split's normalised gallery."""

    name: str
    split: str
    pair_ids: list[int]
    labels: QueryLabels
    parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    gallery: torch.Tensor

    def describe(self, rule: str) -> dict:
        return {"split": self.split, "rule": rule, "queries": len(self.pair_ids),
                "gallery_images": self.gallery.shape[0], "pair_ids_sha256": ids_sha256(self.pair_ids)}


def make_part(name: str, data: SplitData, emb, rows: Sequence[int] | None = None) -> Part:
    for attr in (*PARTS, "gallery"):
        if getattr(emb, attr).ndim != 2:
            raise HarnessError(f"--mix needs single-vector embeddings; {attr} is {tuple(getattr(emb, attr).shape)}")
    rows = list(range(len(data.queries))) if rows is None else list(rows)
    queries = [data.queries[i] for i in rows]
    index = torch.tensor(rows, dtype=torch.long)
    labels = build_labels(queries, {g: i for i, g in enumerate(emb.gallery_ids)})
    parts = tuple(normalized(getattr(emb, attr)[index]) for attr in PARTS)
    return Part(name, data.split, [q.pair_id for q in queries], labels, parts, normalized(emb.gallery))


def mixed_counts(part: Part, weights: torch.Tensor):
    """(gallery counts, subset counts), each (greater, equal, positive scores) of shape
    (W, Q, P), for the mixed queries of every weight triple: the gallery ranks from the
    retrieval core, the image-set ranks from the three parts' scores against the five
    other members, combined by the same formula (Q x M x 3 dot products)."""
    labels = part.labels
    gallery_counts = kernels.mixed_rank_counts(part.parts, part.gallery, weights, labels.positives,
                                               labels.reference)
    blocks = []
    for p in part.parts:
        scores, valid = subset_scores_of(p, part.gallery, labels)
        blocks.append(scores)
    subset_scores = torch.einsum("wk,kqm->wqm", weights.float(), torch.stack(blocks))
    w, q = weights.shape[0], labels.positives.shape[0]
    counts = kernels.reference.rank_counts_dense(
        subset_scores.reshape(w * q, subset_scores.shape[-1]),
        valid.repeat(w, 1),
        labels.member_positives.repeat(w, 1),
    )
    subset_counts = tuple(c.reshape(w, q, c.shape[-1]) for c in counts)
    return gallery_counts, subset_counts


def sweep_metrics(part: Part, weights: torch.Tensor, convention: str, tie_rule: str,
                  chunk: int = SWEEP_CHUNK) -> dict[str, list[float]]:
    """Every CIRR metric for every weight triple: {metric: [value per triple]}."""
    out: dict[str, list[float]] = {m: [] for m in METRICS}
    for start in range(0, weights.shape[0], chunk):
        gallery_counts, subset_counts = mixed_counts(part, weights[start : start + chunk])
        values = metrics_from_counts(gallery_counts, subset_counts, part.labels, convention, tie_rule)
        for name in METRICS:
            out[name] += values[name]
    return out


def best_index(values: Sequence[float]) -> int:
    """The first triple (grid order) with the highest value."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def direct_metrics(part: Part, query: torch.Tensor, convention: str, tie_rule: str) -> dict[str, float]:
    return cirr_metrics(query, part.gallery, part.labels, convention, tie_rule)


# ----------------------------------------------------------------- learning


def learn_weights(part: Part, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                  seed: int, steps: int = LEARN_STEPS, lr: float = LEARN_LR,
                  batch: int = LEARN_BATCH) -> dict:
    """theta (3,) with w = softmax(theta) minimising loss_fn(normalize(w·parts), target)
    over the part's queries that have a target in the gallery."""
    has_target = (part.labels.hard[:, :1] > 0).squeeze(1) if part.labels.hard.shape[1] else None
    if has_target is None or not bool(has_target.any()):
        raise HarnessError(f"--mix learn: no tuning query of {part.split} has its target in the gallery")
    rows = torch.nonzero(has_target).squeeze(1)
    stacked = torch.stack([p[rows] for p in part.parts])  # (3, N, D)
    targets = part.gallery[part.labels.positives[rows, 0]]
    generator = torch.Generator().manual_seed(seed)
    theta = torch.zeros(3, requires_grad=True)
    optimizer = torch.optim.Adam([theta], lr=lr)
    curve = []
    started = time.perf_counter()
    for _ in range(steps):
        take = (torch.randperm(len(rows), generator=generator)[:batch] if len(rows) > batch
                else torch.arange(len(rows)))
        weights = torch.softmax(theta, dim=0)
        query = F.normalize(torch.einsum("k,knd->nd", weights, stacked[:, take]), dim=-1)
        loss = loss_fn(query, targets[take])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        curve.append(loss.item())
    weights = torch.softmax(theta.detach(), dim=0)
    return {
        "weights": weights.tolist(),
        "theta": theta.detach().tolist(),
        "steps": steps, "lr": lr, "batch": min(batch, len(rows)), "pairs": len(rows),
        "optimizer": "Adam, theta from 0 (uniform weights)",
        "loss_first": curve[0], "loss_last": curve[-1],
        "loss_curve": curve[:: max(1, steps // 20)],
        "seconds": time.perf_counter() - started,
    }


# ----------------------------------------------------------------- tuning split


def ids_sha256(pair_ids: Sequence[int]) -> str:
    return hashlib.sha256(json.dumps(list(pair_ids)).encode()).hexdigest()


def _order_key(seed: int, pair_id) -> str:
    return hashlib.sha256(f"{seed}:{pair_id}".encode()).hexdigest()


def heldout_halves(data: SplitData, seed: int) -> tuple[list[int], list[int]]:
    """Rows of the tuning and the evaluation half: queries ordered by
    sha256("<seed>:<pair id>"), the first floor(n/2) tune, the rest evaluate; each
    half keeps the split's order."""
    order = sorted(range(len(data.queries)), key=lambda i: _order_key(seed, data.queries[i].pair_id))
    tune = sorted(order[: len(order) // 2])
    return tune, sorted(order[len(order) // 2 :])


def subsample(data: SplitData, cap: int | None, seed: int) -> tuple[SplitData, str]:
    """The split's queries that have a target, at most `cap` of them (the first `cap` by
    the seeded hash order), under a split name that says so (its own cache entry)."""
    rows = [i for i, q in enumerate(data.queries) if q.target is not None]
    rule = f"queries with a target ({len(rows)} of {len(data.queries)})"
    if cap is not None and len(rows) > cap:
        rows = sorted(sorted(rows, key=lambda i: _order_key(seed, data.queries[i].pair_id))[:cap])
        rule += f", the first {cap} by sha256('{seed}:<pair id>')"
        return replace(data, queries=[data.queries[i] for i in rows],
                       split=f"{data.split}-sample{cap}-seed{seed}"), rule
    return replace(data, queries=[data.queries[i] for i in rows]), rule


# ----------------------------------------------------------------- the run step


def run_mixing(config, suite, data: SplitData, emb, embed: Callable[[SplitData], object]) -> dict:
    """The `mixing` block of a run's results: chosen weights, their metrics on the
    evaluation set, the sweep, the learned weights and the timings. `embed(split_data)`
    returns (cached) embeddings of another split, for --tune-split train."""
    started = time.perf_counter()
    if config.tune_split == HELDOUT:
        tune_rows, eval_rows = heldout_halves(data, config.seed)
        tune = make_part("tuning", data, emb, tune_rows)
        evaluation = make_part("evaluation", data, emb, eval_rows)
        order = f"{HELDOUT}: queries ordered by sha256('{config.seed}:<pair id>')"
        tune_rule, eval_rule = f"{order}, the first half", f"{order}, the second half"
    else:
        tune_data, tune_rule = subsample(suite.load(config.tune_split), config.tune_max_queries, config.seed)
        tune_emb = embed(tune_data)
        tune = make_part("tuning", tune_data, tune_emb)
        evaluation = make_part("evaluation", data, emb)
        eval_rule = "the whole split"
    block: dict = {
        "modes": list(config.mix),
        "tuning": tune.describe(tune_rule),
        "evaluation": evaluation.describe(eval_rule),
        "parts": {"w0": "image-only q", "w1": "text-only t", "w2": "composed f(q,t)"},
        "rows": [],
        "timings": {},
    }
    args = (config.convention, config.tie_rule)

    def add_row(method: str, weights: Sequence[float] | None = None, rule: str | None = None, **extra):
        def query(part: Part) -> torch.Tensor:
            return mix(part.parts, weights) if weights is not None else aggregate(part.parts, rule)

        block["rows"].append({
            "method": method,
            "weights": None if weights is None else [round(float(w), 6) for w in weights],
            **extra,
            "tuning": direct_metrics(tune, query(tune), *args),
            "metrics": direct_metrics(evaluation, query(evaluation), *args),
        })

    for method, weights in (("f alone", (0, 0, 1)), ("q alone", (1, 0, 0)), ("t alone", (0, 1, 0))):
        add_row(method, weights)
    if "sweep" in config.mix:
        grid = simplex_grid(config.mix_step)
        timed = time.perf_counter()
        tune_sweep = sweep_metrics(tune, grid, *args)
        block["timings"]["sweep_tuning_seconds"] = time.perf_counter() - timed
        timed = time.perf_counter()
        eval_sweep = sweep_metrics(evaluation, grid, *args)
        block["timings"]["sweep_evaluation_seconds"] = time.perf_counter() - timed
        block["sweep"] = {"step": config.mix_step, "triples": grid.shape[0],
                          "order": "w0 slowest, then w1; a metric's best is the first triple with its highest tuning value",
                          "weights": [[round(w, 6) for w in row] for row in grid.tolist()],
                          "tuning": tune_sweep, "evaluation": eval_sweep}
        for metric in METRICS:
            best = best_index(tune_sweep[metric])
            add_row(f"best {metric} on tuning", grid[best].tolist(), chosen_for=metric,
                    sweep_index=best)
    if "learn" in config.mix:
        loss_fn = contrastive_loss(config.loss, config.temperature, config.hnnce_alpha, config.hnnce_beta)
        learned = learn_weights(tune, loss_fn, config.seed)
        learned.update(loss=config.loss, temperature=config.temperature,
                       alpha=config.hnnce_alpha, beta=config.hnnce_beta)
        block["learned"] = learned
        block["timings"]["learn_seconds"] = learned["seconds"]
        add_row(f"learned ({config.loss})", learned["weights"])
    for token in config.mix:
        if token not in MODES:
            add_row(f"fixed {token}", parse_weights(token))
    for rule in RULES:
        if rule in config.mix:
            add_row(f"element-wise {rule}", rule=rule)
    block["timings"]["total_seconds"] = time.perf_counter() - started
    return block


def mix_step(config, suite, data: SplitData, emb, model, out_dir, stem: str) -> dict:
    """run_mixing, plus the sweep's heat-map PNG written beside the results (named in
    the block by file name, relative to the results file). `model` = (backbone, device,
    precision) embeds a tuning split other than the evaluated one, through the cache."""
    from pathlib import Path

    from harness.embed import embed_split
    from harness.embedding_cache import cached_embed
    from harness.heatmap import title_of, write_heatmap
    from harness.paths import cache_dir
    from harness.progress import say
    from harness.provenance import describe_machine, hardware

    backbone, device, precision = model

    def embed(split_data: SplitData):
        say(f"embedding the tuning split {split_data.suite}/{split_data.split}: "
            f"{len(split_data.gallery)} images, {len(split_data.queries)} queries")
        return cached_embed(
            lambda partial: embed_split(backbone, split_data, device, precision, config.eval_batch_size, partial),
            backbone, split_data, precision, cache_dir() / "embeddings" if config.cache else None,
        )

    block = run_mixing(config, suite, data, emb, embed)
    block["hardware"] = hardware(torch.device("cpu"))  # mixing runs on the CPU copies
    block["load_average_1min"] = os.getloadavg()[0]  # other work on the machine slows the timings
    if "sweep" in block:
        path = Path(out_dir) / f"{stem}.mix_heatmap.png"
        title = title_of(config.to_dict(), block)
        write_heatmap(block, path, title, describe_machine(block["hardware"]))
        block["heatmap"] = path.name
    return block
