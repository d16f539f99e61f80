"""One run in markdown: its summary lines and its protocol's metrics table (printed
and written beside the results file), and its section of BENCHMARKS.md."""

from __future__ import annotations

from pathlib import Path

from harness.evaluation.fingerprint import differences
from harness.evaluation.paper import (
    PAPER_CIRCO,
    PAPER_CIRR,
    PAPER_DENSE_WEBVID,
    PAPER_FASHIONIQ,
    PAPER_GENECIS,
    PAPER_WEBVID,
)
from harness.evaluation.protocols import PROTOCOLS, scoring_of
from harness.reports.header import section_header
from harness.reports.mixing import mixing_markdown
from harness.reports.rerank import rerank_markdown
from harness.reports.similarity import similarity_markdown
from harness.reports.training import training_line

PAPERS = {"cirr": PAPER_CIRR, "fashioniq": PAPER_FASHIONIQ, "circo": PAPER_CIRCO,
          "webvid-covr": PAPER_WEBVID, "dense-webvid-covr": PAPER_DENSE_WEBVID,
          "genecis": PAPER_GENECIS}  # suite -> paper rows


def metrics_table(result: dict) -> str:
    return PROTOCOLS.get(scoring_of(result)).metrics_table(result)


def run_summary(result: dict) -> str:
    p, b = result["protocol"], result["backbone"]
    lines = [
        f"{p['suite']} / {p['split']}: {p['queries']} queries over {p['gallery_images']} gallery images; "
        f"{reference_text(p.get('reference_removed', True))}; tie rule {p['tie_rule']}"
        + (f"; query text {p['query_template']}" if p.get("query_template", "caption") != "caption" else "")
        + (f"; convention {p['convention']}" if "convention" in p else "")
        + (f"; captions joined as {p['caption_rule']}" if p.get("caption_rule") else "")
        + ("; ranked within each category (" + ", ".join(f"{c} {n} images" for c, n in
           p["category_gallery_images"].items()) + ")" if p.get("category_gallery_images") else ""),
        f"backbone {b['name']} ({b['checkpoint']}), precision {result['precision']}, seed {result['seed']}",
    ]
    if p.get("fingerprint"):
        fp = p["fingerprint"]
        lines.append(f"protocol {fp['hash']}: gallery {fp['gallery']}, captions cleaned {fp['caption_cleaning']}, "
                     f"{fp['text_length']} text tokens, {fp['image_size']} px {fp['interpolation']}, "
                     f"similarity {fp['similarity']}")
    training = result.get("training")
    if training:
        lines.append(
            f"fine-tuned {training['epochs']} epochs x {training['steps'] // max(1, training['epochs'])} "
            f"steps, batch {training['batch_size']}{', ' + training['precision'] if training.get('precision') else ''}, "
            f"{training['train_queries']} queries"
            f"{' of ' + training['trained_on'] if training.get('trained_on') else ''}, "
            f"{training['seconds']:.0f} s ({training['samples_per_second']:.0f} samples/s), "
            f"loss per epoch {', '.join(f'{x:.3f}' for x in training['loss_curve'])}"
        )
        if training_line(training):
            lines.append(training_line(training))
    return "\n".join(lines)


def reference_text(rule) -> str:
    """The protocol block's reference_removed in words (harness/evaluation/reference_rule.py)."""
    if rule is True:
        return "reference removed"
    return "reference kept in its ranking" if rule is False else f"reference masked by the {rule} rule"


def paper_differences(result: dict) -> list[str]:
    """For a run on a suite the papers report: each paper row's protocol fields that
    differ from the run's (harness/evaluation/paper.py); nothing for other suites."""
    fp = result["protocol"].get("fingerprint")
    papers = [p for p in PAPERS.get(result["protocol"]["suite"], []) if p.get("protocol")]
    if not fp or not papers:
        return []
    lines = ["Where this run's protocol differs from the papers' (run vs paper):", ""]
    for paper in papers:
        found = differences(fp, paper["protocol"])
        lines.append(f"- {paper['row']} ({paper['source']}): " + ("; ".join(found) or "the same protocol"))
    return [*lines, ""]


def result_markdown(result: dict) -> str:
    parts = [run_summary(result), ""]
    if result.get("metrics"):
        parts.append(metrics_table(result))
        parts += ["", *paper_differences(result)]
    if result.get("mixing"):
        parts += ["", *mixing_markdown(result["mixing"])]
    if result.get("similarity_study"):
        parts += ["", *similarity_markdown(result["similarity_study"])]
    if result.get("rerank"):
        parts += ["", *rerank_markdown(result["rerank"])]
    if result.get("server_files"):
        parts.append("server files: " + ", ".join(result["server_files"].values()))
    return "\n".join(parts) + "\n"


def run_section(path: Path, result: dict, seed_lines: list[str]) -> list[str]:
    """A run's section: header, summary, metrics, its recipe's seed spread, mixing."""
    p, timings = result["protocol"], result["timings"]
    out = section_header(
        f"{p['suite']} {p['split']}, {result['backbone']['name']}", result, path,
        packages=("torch", "transformers"), identity=f"config {result['config_hash']}",
        lines=[f"- whole run {timings['total_seconds']:.0f} s; embedding "
               f"{timings['embedding']['images_per_second']:.0f} images/s, "
               f"{timings['embedding']['queries_per_second']:.0f} queries/s"],
    )
    out += ["```", run_summary(result), "```", ""]
    if result.get("metrics"):
        out += [metrics_table(result), "", *paper_differences(result)]
    out += seed_lines
    if result.get("mixing"):
        out += mixing_markdown(result["mixing"], path.parent)
    if result.get("similarity_study"):
        out += similarity_markdown(result["similarity_study"])
    if result.get("rerank"):
        out += rerank_markdown(result["rerank"])
    return out
