"""BENCHMARKS.md's zero-shot section: the CLIP composers over seeds on each suite, each
against the image-only and text-only baselines of the same runs, and the published
zero-shot rows (harness/evaluation/paper_zero_shot.py) with the protocol fields where
our runs differ from theirs.

A composer beats a baseline beyond noise when, as harness/compare.py decides for two
recipes, every seed's paired interval over queries excludes 0 on the same side and the
mean difference over seeds exceeds twice its spread."""

from __future__ import annotations

from pathlib import Path

from tabulate import tabulate

from harness.evaluation.embed import COMPOSED
from harness.evaluation.fingerprint import differences
from harness.evaluation.intervals import over_seeds
from harness.evaluation.paper import PAPER_ZERO_SHOT
from harness.reports.header import section_header

# The metrics the CIRR, FashionIQ and CIRCO tables lead with: those a result has are shown.
HEADLINE = ("R@1", "R@5", "Rsubset@1", "avg R@10", "avg R@50", "mAP@5", "mAP@10")
BASELINES = ("image-only q", "text-only t")


def beyond_noise(runs: list[dict], baseline: str, metric: str) -> tuple[float, float, int, bool]:
    """(mean difference, its sd over seeds, seeds whose paired interval excludes 0 on
    the mean's side, whether the difference holds), as harness/compare.py decides."""
    verdict = over_seeds([run["intervals"]["paired"][f"{COMPOSED} minus {baseline}"][metric] for run in runs])
    return verdict["mean"], verdict["sd"], verdict["seeds_beyond_query_noise"], verdict["holds"]


def is_clip_over_seeds(result: dict) -> bool:
    return result.get("kind") == "seeds" and bool(result["config"].get("composer")) and len(result["runs"]) > 1


def _summary(result: dict, method: str, metric: str) -> str:
    value = result["summary"][method][metric]
    return f"{value['mean']:.2f} ± {value['sd']:.2f}"


def _difference(runs: list[dict], baseline: str, metric: str) -> tuple[str, bool]:
    mean, sd, agreeing, holds = beyond_noise(runs, baseline, metric)
    return f"{mean:+.2f} ± {sd:.2f} ({agreeing}/{len(runs)})", holds


def composer_rows(results: list[tuple[Path, dict]]) -> list[list]:
    rows = []
    for _, result in results:
        for metric in (m for m in HEADLINE if m in result["summary"][COMPOSED]):
            image, beats_image = _difference(result["runs"], BASELINES[0], metric)
            text, beats_text = _difference(result["runs"], BASELINES[1], metric)
            rows.append([result["protocol"]["suite"], result["config"]["composer"], metric,
                         _summary(result, COMPOSED, metric), _summary(result, BASELINES[0], metric),
                         _summary(result, BASELINES[1], metric), image, text,
                         "yes" if beats_image and beats_text and "-" not in image + text else "no"])
    return rows


def paper_rows(results: list[tuple[Path, dict]]) -> list[str]:
    """Each published row, and where our runs on its suite differ from its protocol."""
    ours = {(r["protocol"]["suite"], r["config"]["composer"]): r["protocol"]["fingerprint"] for _, r in results}
    lines = []
    for paper in PAPER_ZERO_SHOT:
        protocol = paper["protocol"]
        metrics = ", ".join(f"{k} {v:.2f}" for k, v in paper["metrics"].items())
        lines.append(f"- {paper['row']} ({paper['weights']}), {protocol['suite']} {protocol['split']}: {metrics}. "
                     f"Source: {paper['source']}.")
        run = closest_run(ours, protocol)
        if run is not None:
            lines.append(f"  Our clip-tiny {run['suite']} run with {run['composer']} differs in: "
                         + ("; ".join(differences(run, protocol)) or "nothing stated"))
    return lines


def closest_run(ours: dict[tuple[str, str], dict], protocol: dict) -> dict | None:
    """Our run nearest a paper row's protocol: on its suite (shapes for CIRR, the
    generated suite scored by CIRR's protocol; FashionIQ for its both-orders variant),
    with its composer if we ran it, else `sum`."""
    suite = {"cirr": "shapes"}.get(protocol["suite"], protocol["suite"].replace("-both-orders", ""))
    return ours.get((suite, protocol.get("composer"))) or ours.get((suite, "sum"))


def zero_shot_section(results: list[tuple[Path, dict]]) -> list[str]:
    results = [(path, result) for path, result in results if is_clip_over_seeds(result)]
    if not results and not PAPER_ZERO_SHOT:
        return []
    out = []
    if results:
        path, first = results[0]
        out += section_header("Zero-shot and CLIP composers (clip-tiny, generated suites), over seeds", first, path,
                              lines=[f"- result files: {', '.join(f'`{p.name}`' for p, _ in results)}"])
        headers = ["suite", "composer", "metric", "composed", "image-only", "text-only", "composed - image",
                   "composed - text", "beats both beyond noise"]
        out += [tabulate(composer_rows(results), headers=headers, tablefmt="github"), "",
                "Mean ± sd over seeds. A difference is the mean over seeds of the paired difference on the same "
                "queries ± its sd over seeds, with (n/seeds) the seeds whose 95% paired bootstrap interval over "
                "queries excludes 0 on the mean's side; it holds beyond noise when every seed's does and the mean "
                "exceeds twice the sd (harness/reports/zero_shot.py).", ""]
    out += ["## Published zero-shot numbers, for comparison", "",
            "As traced in harness/evaluation/paper_zero_shot.py; not comparable in size with clip-tiny's "
            "(real CLIP weights and datasets against a toy model on generated scenes), listed with the protocol "
            "fields where they differ:", "", *paper_rows(results), ""]
    return out
