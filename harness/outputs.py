"""What a scored split leaves beside its results: the scoring itself (metrics,
intervals, the per-query file, or the server files of a split without targets) and
the written outputs (results JSON, markdown table, HTML page). Shared by a run
(harness/pipeline.py) and by scoring embeddings made elsewhere (harness/score.py)."""

from __future__ import annotations

from pathlib import Path

import coir_kernels
from harness.core.atomic import write_json, write_text
from harness.core.errors import HarnessError
from harness.core.progress import say
from harness.evaluation import token_pooling
from harness.evaluation.embed import COMPOSED
from harness.evaluation.intervals import method_intervals
from harness.evaluation.per_query import write_records
from harness.evaluation.protocols.base import ScoringRules
from harness.reports.html import run_html
from harness.reports.run import result_markdown
from harness.suites.base import SplitData


def score(protocol, data: SplitData, embeddings, rules: ScoringRules, out_dir: Path, stem: str,
          normalised_by: str | None = None, server_stem: str | None = None) -> dict:
    """{"metrics", "intervals", "per_query_file", "records"} for a split with targets,
    {"server_files"} for one without (written into out_dir); both with the
    "token_pooling" and "similarity" actually used. `rules` are resolved for the
    protocol (harness/evaluation/protocols `resolved`); multi-vector embeddings are
    scored as `rules.token_pooling` pools them; `normalised_by`: who made the vectors
    unit length, where the caller did (harness.score --normalize); `server_stem`: the
    server files' name stem where it is not `stem` (a two-stage run's first stage)."""
    scored: dict = {"metrics": None, "server_files": None,
                    "token_pooling": token_pooling.recorded_rule(embeddings, rules.token_pooling),
                    "similarity": token_pooling.similarity_name(embeddings, rules.token_pooling, normalised_by)}
    embeddings = token_pooling.pooled(embeddings, rules.token_pooling)
    if not data.has_targets or getattr(protocol, "val_predictions", False):
        scored["server_files"] = protocol.write_server_files(data, embeddings, rules, out_dir, server_stem or stem)
    if not data.has_targets:
        return scored
    scored["metrics"] = protocol.evaluate(data, embeddings, rules)
    scored["intervals"] = method_intervals(protocol.query_values(data, embeddings, rules), COMPOSED)
    scored["records"] = protocol.query_records(data, embeddings, rules)
    scored["per_query_file"] = write_records(out_dir / f"{stem}.queries.jsonl", scored["records"]).name
    scored["kernels"] = coir_kernels.used()  # which implementation scored (coir_kernels/__init__.py)
    return scored


def protocol_fields(protocol, data: SplitData, rules: ScoringRules, scored: dict) -> dict:
    """The protocol's describe() and, where features had tokens, the pooling `score` used."""
    fields = protocol.describe(data, rules)
    if scored.get("token_pooling"):
        fields["token_pooling"] = scored["token_pooling"]
    study = scored.get("similarity_study")
    if study:
        fields["similarity_study"] = f"{', '.join(study['methods'])}; bank {study['bank'].get('split') or 'none'}"
    rerank = scored.get("rerank")
    if rerank:
        fusion = rerank["fusion"]
        fields["rerank"] = (f"{rerank['reranker']} top {rerank['k']}, fusion {fusion['rule']}"
                            f"{'' if fusion['alpha'] is None else ' alpha ' + str(fusion['alpha'])}, "
                            f"weights {str(rerank['checkpoint_sha256'])[:12]}")
    return fields


def result_fields(scored: dict) -> dict:
    """The results file's fields from `score`'s output."""
    return {
        "metrics": scored["metrics"],
        **({"intervals": scored["intervals"]} if scored.get("intervals") else {}),
        **({"per_query_file": scored["per_query_file"]} if scored.get("per_query_file") else {}),
        **({"mixing": scored["mixing"]} if scored.get("mixing") else {}),
        **({"similarity_study": scored["similarity_study"]} if scored.get("similarity_study") else {}),
        **({"rerank": scored["rerank"]} if scored.get("rerank") else {}),
        "server_files": scored["server_files"],
        **({"kernels": scored["kernels"]} if scored.get("kernels") else {}),
        # whether the gallery was split across ranks (harness/evaluation/shard_scoring.py)
        **({"gallery_shards": scored["gallery_shards"]} if scored.get("gallery_shards") else {}),
    }


def thumbnails(data: SplitData):
    """id -> the split's image, for the HTML page: None for an id it does not hold or
    an image that cannot be read (scores of embeddings made elsewhere often come
    without the images; the page then shows the id)."""

    def image_of(image_id: str):
        if image_id not in data.image_paths:
            return None
        try:
            return data.load_image(image_id)
        except HarnessError:
            return None

    return image_of


def write_outputs(result: dict, records: list[dict], data: SplitData, out_dir: Path, stem: str) -> Path:
    """The results JSON, its markdown table (printed too) and its HTML page."""
    result_path = write_json(out_dir / f"{stem}.json", result)
    table = result_markdown(result)
    write_text(result_path.with_suffix(".md"), table)
    heatmap = out_dir / result["mixing"]["heatmap"] if result.get("mixing", {}).get("heatmap") else None
    write_text(result_path.with_suffix(".html"), run_html(result, records, thumbnails(data), heatmap))
    print(table)
    extra = ", .queries.jsonl" if result.get("per_query_file") else ""
    say(f"results: {result_path} (and .md, .html{extra})")
    return result_path
