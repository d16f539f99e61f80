"""What `--mix` accepts, checked before any work: mode names, fixed weight triples,
and the suites, backbones, token pooling and tuning splits mixing covers
(harness/mixing/__init__.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from harness.core import distributed
from harness.core.errors import HarnessError
from harness.evaluation.protocols import PROTOCOLS, ScoringRules, resolved
from harness.mixing.adapters import MIXERS
from harness.mixing.grid import RULES, simplex_grid
from harness.suites.base import SplitData

MODES = ("sweep", "learn", *RULES)
HELDOUT = "heldout-half"


@dataclass(frozen=True)
class MixSettings:
    """What a run's mixing step uses (built from RunConfig.mixing())."""

    modes: tuple[str, ...]
    step: float
    tune_split: str
    tune_max_queries: int | None
    seed: int
    convention: str
    tie_rule: str
    loss: str  # the contrastive loss --mix learn fits (harness/training/losses.py)
    temperature: float
    hnnce_alpha: float
    hnnce_beta: float
    suite: str
    split: str
    backbone: str
    reference: str = "remove"  # harness/evaluation/reference_rule.py
    # multi-vector features: the run's rule (harness/evaluation/token_pooling.py); "auto": the protocol's
    token_pooling: str = "auto"


def scoring_rules(settings: MixSettings, scoring: str) -> ScoringRules:
    """The rules the run's protocol scores with (pooling resolved): mixing scores by them too."""
    rules = ScoringRules(convention=settings.convention, tie_rule=settings.tie_rule, reference=settings.reference,
                         token_pooling=settings.token_pooling)
    return resolved(rules, PROTOCOLS.get(scoring))


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


def check(settings: MixSettings, suite, data: SplitData, backbone) -> None:
    """Before any embedding: refuse what mixing does not cover, saying why."""
    if not settings.modes:
        return
    scoring = getattr(suite, "scoring", "cirr")
    if scoring not in MIXERS:
        raise HarnessError(f"--mix applies to suites scored by the protocols {', '.join(MIXERS.names())}, "
                           f"not {settings.suite} ({scoring})")
    multi_vector = getattr(backbone, "multi_vector", False) or getattr(backbone, "query_multi_vector", False)
    pooling = scoring_rules(settings, scoring).token_pooling
    if multi_vector and pooling != "mean":
        raise HarnessError(
            f"--mix is defined for single-vector embeddings; {settings.backbone} features are "
            f"multi-vector (32 tokens, max-sim scoring under token pooling {pooling}), under which a mixed "
            "score is not the weighted sum of the parts' scores (see harness/mixing/__init__.py); "
            "under --token-pooling mean (the FashionIQ, CIRCO and WebVid-CoVR protocols' rule) it is"
        )
    if not data.has_targets:
        raise HarnessError(f"--mix needs a split with targets; {settings.suite}/{settings.split} has none")
    # an adapter that scores other reference rules says so (EgoCVR's: keep and remove)
    if settings.reference not in getattr(MIXERS.get(scoring), "reference_rules", ("remove",)):
        raise HarnessError(f"--mix scores with the reference removed; --reference {settings.reference} "
                           "is not supported with it yet: leave --reference out")
    if settings.tune_split == settings.split:
        raise HarnessError(f"--tune-split {settings.split} is the evaluated split: use {HELDOUT} "
                           "to tune on a held-out half of it")
    if settings.tune_split != HELDOUT and distributed.launched_by_torchrun():
        raise HarnessError(f"--tune-split {settings.tune_split} under torchrun is not supported: "
                           f"use {HELDOUT}, or run the mixing without torchrun (embeddings are cached)")
    if settings.tune_split != HELDOUT and settings.tune_split not in getattr(suite, "splits", ()):
        raise HarnessError(f"--tune-split must be {HELDOUT} or a split of {settings.suite} "
                           f"({', '.join(suite.splits)}), not {settings.tune_split!r}")
    simplex_grid(settings.step)
