"""A run's second stage: each query's first-stage top K re-scored by a re-ranker, the
final ranking scored by the suite's own protocol beside the first stage's on the same
queries (each with its bootstrap interval, and the paired interval of stage 2 minus
stage 1), the final ranking's server files (the first stage's are the run's own scoring,
under the ".stage1" stem: harness/pipeline.py), and its per-query entries.

With --rerank-fusion tuned, alpha is chosen on one seeded half of the queries (the
mixing step's halves) for the protocol's headline metric and both stages are reported
on the other half; otherwise on every query.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from harness.core import distributed
from harness.core.errors import HarnessError
from harness.core.progress import say
from harness.evaluation import token_pooling
from harness.evaluation.embed import COMPOSED, RERANKED
from harness.evaluation.intervals import DESCRIPTION, bootstrap, paired
from harness.evaluation.reference_rule import excluded_indices, excluded_items
from harness.mixing.parts import heldout_halves
from harness.rerank.base import TUNED_FUSION, RerankSettings
from harness.rerank.candidates import Candidates, first_stage, second_stage
from harness.rerank.final import ALPHAS, final_embeddings, first_stage_matrix, second_stage_values
from harness.similarity.base import Scoring
from harness.similarity.study import half_values, metric_means


class FinalRanking:
    """The final ranking of every query for a fusion weight (None: stage-2 scores alone)."""

    def __init__(self, data, emb, candidates: Candidates, stage2: list[torch.Tensor]):
        self.data, self.emb, self.candidates, self.stage2 = data, emb, candidates, stage2
        self.stage1 = first_stage_matrix(emb)

    def embeddings(self, alpha: float | None):
        return final_embeddings(self.data, self.emb, self.stage1, self.candidates,
                                second_stage_values(self.candidates, self.stage2, alpha))


def tune_alpha(final: FinalRanking, protocol, rules, rows: list[int]) -> tuple[float, list[dict]]:
    """The fusion weight with the best headline metric on `rows` (the smallest of equals)."""
    key, tried = protocol.headline_metric, []
    for alpha in ALPHAS:
        scoring = Scoring(final.embeddings(alpha))
        tried.append({"alpha": alpha, key: metric_means(half_values(protocol, rules, final.data, scoring, rows))[key]})
    best = max(tried, key=lambda t: (t[key], -t["alpha"]))
    return best["alpha"], tried


def target_in_top(data, gallery_ids: list[str], candidates: Candidates, rows: list[int]) -> float:
    """Percent of the queries at `rows` whose target is among their K candidates: stage 2's ceiling at R@K."""
    hits = [data.queries[qi].target in {gallery_ids[j] for j in candidates.index[qi].tolist()} for qi in rows]
    return 100.0 * sum(hits) / max(len(hits), 1)


def reranked_records(protocol, rules, data, final_emb, candidates: Candidates, stage2, gallery_ids) -> list[dict]:
    """The protocol's per-query entries of the final ranking, each top item with its
    stage-2 value (null past the top K) instead of the identity gallery's placeholder score."""
    records = protocol.query_records(data, final_emb, rules)
    for qi, record in enumerate(records):
        entry = record["methods"].pop(COMPOSED)
        value = dict(zip((gallery_ids[j] for j in candidates.index[qi].tolist()), stage2[qi].tolist()))
        entry.pop("top_scores", None)
        entry["stage2_scores"] = [round(value[g], 6) if g in value else None for g in entry["top"]]
        record["methods"] = {RERANKED: entry}
    return records


def rerank_step(settings: RerankSettings, reranker, protocol, rules, data, embeddings, device, precision: str,
                batch_size: int, out_dir, stem: str) -> tuple[dict, list[dict] | None] | None:
    """(the results' "rerank" block, the final ranking's per-query entries); None on a
    torchrun rank other than 0 (every rank re-ranks a share of the queries)."""
    started = time.perf_counter()
    emb, candidates = None, None
    if embeddings is not None:  # rank 0 finds the candidates, every rank re-ranks a share
        emb = token_pooling.pooled(embeddings, rules.token_pooling)
        index = {g: i for i, g in enumerate(emb.gallery_ids)}
        candidates = first_stage(data, emb, excluded_indices(excluded_items(data.queries, rules.reference), index),
                                 settings.k)
    gallery_ids, candidates = distributed.broadcast_from_rank0(
        (emb.gallery_ids, candidates) if emb is not None else None)
    stage2_and_cost = second_stage(reranker, data, gallery_ids, candidates, device, precision, batch_size)
    if stage2_and_cost is None:
        return None
    stage2, cost = stage2_and_cost
    final = FinalRanking(data, emb, candidates, stage2)
    block = {"reranker": settings.reranker, "k": settings.k, "checkpoint": reranker.checkpoint_id,
             "checkpoint_sha256": reranker.checkpoint_sha256, "cost": cost}
    if not data.has_targets:
        final_emb = final.embeddings(settings.fusion_alpha())
        block["fusion"] = {"rule": settings.fusion, "alpha": settings.fusion_alpha()}
        block["server_files"] = protocol.write_server_files(data, final_emb, rules, out_dir, stem)
        block["seconds"] = time.perf_counter() - started
        return block, None
    block.update(scored_stages(settings, final, protocol, rules))
    final_emb = final.embeddings(block["fusion"]["alpha"])
    if getattr(protocol, "val_predictions", False):
        block["server_files"] = protocol.write_server_files(data, final_emb, rules, out_dir, stem)
    records = reranked_records(protocol, rules, data, final_emb, candidates,
                               second_stage_values(candidates, stage2, block["fusion"]["alpha"]), emb.gallery_ids)
    block["seconds"] = time.perf_counter() - started
    return block, records


def scored_stages(settings: RerankSettings, final: FinalRanking, protocol, rules) -> dict:
    """Fusion (fixed or tuned on a half), then both stages on the evaluated queries."""
    data = final.data
    rows = list(range(len(data.queries)))
    fusion = {"rule": settings.fusion, "alpha": settings.fusion_alpha()}
    evaluated = "every query"
    if settings.fusion == TUNED_FUSION:
        tune_rows, rows = heldout_halves(data, settings.seed)
        if not tune_rows or not rows:
            raise HarnessError("--rerank-fusion tuned needs at least two queries (one half tunes alpha)")
        fusion["alpha"], fusion["tuning"] = tune_alpha(final, protocol, rules, tune_rows)
        evaluated = f"heldout-half seed {settings.seed}, the second half (the first tuned alpha)"
        say(f"re-ranking fusion: alpha {fusion['alpha']} (best {protocol.headline_metric} on the tuning half)")
    first = half_values(protocol, rules, data, Scoring(replace(final.emb, image=None, text=None)), rows)
    second = half_values(protocol, rules, data, Scoring(final.embeddings(fusion["alpha"])), rows)
    key = protocol.headline_metric
    return {
        "fusion": fusion,
        "queries": len(rows),
        "evaluated": evaluated,
        "headline": key,
        "target_in_top_k": target_in_top(data, final.emb.gallery_ids, final.candidates, rows),
        "stage1": {"metrics": metric_means(first), "interval": bootstrap(first)},
        "stage2": {"metrics": metric_means(second), "interval": bootstrap(second)},
        "stage2_minus_stage1": paired(second, first),
        "changed": {"improved": int((second[key] > first[key]).sum()), "worsened": int((second[key] < first[key]).sum())},
        "intervals": f"{DESCRIPTION}; stage2_minus_stage1 is paired, on the same queries",
    }
