"""Every metric of every weight triple of a sweep, and the direct scoring of one set
of mixed queries.

The sweep counts ranks for all triples in one pass of the retrieval core
(`coir_kernels.mixed_rank_counts`, per query block of the protocol) and turns the counts
into the protocol's metrics (harness/mixing/adapters). A direct row (f alone, the
chosen triples, learned, fixed, median, max) is scored by the protocol itself:
its `evaluate` and `query_values` on the set's queries, with the mixed query as the
composed one; a sweep entry equals that row's figures (tests/test_mix_protocols.py)."""

from __future__ import annotations

import torch

from harness.evaluation.embed import COMPOSED
from harness.evaluation.protocols import PROTOCOLS, ScoringRules
from harness.mixing.adapters import Mixer
from harness.mixing.parts import Part

SWEEP_CHUNK = 512  # weight triples per pass (memory: chunk x queries x positives); 231 in one


def sweep_metrics(part: Part, weights: torch.Tensor, mixer: Mixer, rules: ScoringRules,
                  chunk: int = SWEEP_CHUNK) -> dict[str, list[float]]:
    """Every metric of the protocol for every weight triple: {metric: [value per triple]}."""
    out: dict[str, list[float]] = {}
    for start in range(0, weights.shape[0], chunk):
        metrics, _ = mixer.sweep(part, weights[start : start + chunk], rules)
        for name, values in metrics.items():
            out.setdefault(name, []).extend(values)
    return out


def direct_values(part: Part, query: torch.Tensor, mixer: Mixer, rules: ScoringRules) -> dict[str, torch.Tensor]:
    """Each query's value (Q,) of every metric for one set of mixed queries: the
    protocol's `query_values` (what the bootstrap intervals resample)."""
    return PROTOCOLS.get(mixer.name).query_values(part.data, part.embeddings(query), rules)[COMPOSED]


def direct_metrics(part: Part, query: torch.Tensor, mixer: Mixer, rules: ScoringRules) -> dict[str, float]:
    """Every metric for one set of mixed queries: the protocol's `evaluate`."""
    return PROTOCOLS.get(mixer.name).evaluate(part.data, part.embeddings(query), rules)[COMPOSED]
