"""A run as one self-contained HTML page (`<run>.html`, thumbnails embedded): the
summary and protocol fingerprint, the metrics with their intervals, a Recall@K
curve, the mixing heat-map, and qualitative rows (the reference, the caption, the
top-5 retrieved with the target outlined) for a seeded sample of successes and
failures and for the queries where composed and image-only disagree most.

Built from the results and the per-query file (harness/evaluation/per_query.py);
`image_of(id)` returns a PIL image (the split's loader) or None where there is none
to show (the id stands in its place).
The page reports its own health for the browser test: after load, <body> carries
data-images (images decoded) and data-broken (images that failed) and
data-errors (script errors).
"""

from __future__ import annotations

import base64
import html
import io
import math
import random
from collections.abc import Callable
from pathlib import Path

from harness.evaluation.embed import RERANKED
from harness.reports.rerank import paired_text
from harness.reports.run import paper_differences, run_summary

THUMBNAIL = 96
SHOWN = 5  # retrieved images per qualitative row
PER_GROUP = 4  # qualitative rows per group
CURVE_KS = range(1, 51)
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b")

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
pre { background: #f6f6f6; padding: 8px; white-space: pre-wrap; font-size: 12px; }
.row { display: flex; gap: 6px; align-items: flex-start; margin: 10px 0; }
.cell { width: 100px; font-size: 11px; text-align: center; }
.cell img { width: 96px; height: 96px; border: 3px solid #ddd; image-rendering: pixelated; }
.cell img.target { border-color: #2ca02c; }
.cell img.reference { border-color: #888; }
.caption { width: 220px; font-size: 13px; padding: 4px; }
.missing { width: 90px; height: 90px; border: 3px dashed #ccc; font-size: 10px; overflow-wrap: anywhere;
           display: flex; align-items: center; justify-content: center; }
"""

# Marks <body> with what loaded, for tests/test_html_report.py (and anyone debugging).
HEALTH_SCRIPT = """
window.__errors = 0;
window.addEventListener('error', function () { window.__errors += 1; }, true);
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (i) { return !i.complete || i.naturalWidth === 0; }).length;
  document.body.setAttribute('data-images', String(images.length - broken));
  document.body.setAttribute('data-broken', String(broken));
  document.body.setAttribute('data-errors', String(window.__errors));
});
"""


def data_uri(image, size: int = THUMBNAIL) -> str:
    thumb = image.convert("RGB").resize((size, size))
    buffer = io.BytesIO()
    thumb.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def table(headers: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.2f}"
        return html.escape("" if value is None else str(value))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def metrics_section(result: dict) -> str:
    metrics = result["metrics"]
    columns = list(next(iter(metrics.values())))
    parts = ["<h2>Metrics</h2>", table(["method", *columns], [[m, *(v[c] for c in columns)]
                                                              for m, v in metrics.items()])]
    intervals = result.get("intervals")
    if intervals:
        def span(pair) -> str:
            return f"[{pair[0]:.1f}, {pair[1]:.1f}]"

        rows = [[m, *(span(v[c]) for c in columns)] for m, v in intervals["bootstrap"].items()]
        rows += [[p, *(f"{v[c]['difference']:+.1f} {span(v[c]['interval'])}" for c in columns)]
                 for p, v in intervals["paired"].items()]
        parts += [f"<p>95% intervals over queries ({html.escape(intervals['method'])}); a paired row excluding 0 "
                  "is a difference beyond query noise.</p>", table(["interval", *columns], rows)]
    return "\n".join(parts)


def recall_curve(records: list[dict], width: int = 520, height: int = 260) -> str:
    """Inline SVG: % of queries whose target ranks within K, K = 1..50, per method."""
    if not records:
        return ""
    methods = list(records[0]["methods"])
    left, bottom, top = 40, 30, 10
    plot_w, plot_h = width - left - 10, height - bottom - top

    def x(k: int) -> float:
        return left + plot_w * (k - 1) / (len(CURVE_KS) - 1)

    def y(percent: float) -> float:
        return top + plot_h * (1 - percent / 100)

    lines, legend = [], []
    for i, method in enumerate(methods):
        ranks = [r["methods"][method].get("target_rank") for r in records]
        points = [(x(k), y(100.0 * sum(1 for rank in ranks if rank is not None and rank <= k) / len(ranks)))
                  for k in CURVE_KS]
        colour = COLOURS[i % len(COLOURS)]
        lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
                     + " ".join(f"{px:.1f},{py:.1f}" for px, py in points) + '"/>')
        legend.append(f'<text x="{left + 10}" y="{top + 16 + 16 * i}" fill="{colour}" font-size="12">'
                      f"{html.escape(method)}</text>")
    axes = [f'<line x1="{left}" y1="{y(0)}" x2="{left + plot_w}" y2="{y(0)}" stroke="#444"/>',
            f'<line x1="{left}" y1="{y(0)}" x2="{left}" y2="{y(100)}" stroke="#444"/>']
    ticks = [f'<text x="{left - 6}" y="{y(p) + 4:.1f}" font-size="10" text-anchor="end">{p}</text>'
             for p in (0, 25, 50, 75, 100)]
    ticks += [f'<text x="{x(k):.1f}" y="{y(0) + 14:.1f}" font-size="10" text-anchor="middle">{k}</text>'
              for k in (1, 10, 20, 30, 40, 50)]
    return (f'<h2>Recall@K</h2><svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'role="img" aria-label="Recall at K curve">{"".join(axes + ticks + lines + legend)}</svg>')


def qualitative_groups(records: list[dict], seed: int = 0) -> list[tuple[str, list[dict]]]:
    """(title, records): seeded successes and failures of the composed query, and the
    queries where composed and image-only ranks of the target disagree most."""
    methods = list(records[0]["methods"]) if records else []
    if not methods:
        return []
    composed = methods[0]

    def rank(r: dict, method: str) -> float:
        value = r["methods"][method].get("target_rank")
        return math.inf if value is None else value

    rng = random.Random(seed)
    successes = [r for r in records if rank(r, composed) == 1]
    failures = [r for r in records if rank(r, composed) > SHOWN]
    groups = [("Successes (target first), seeded sample", rng.sample(successes, min(PER_GROUP, len(successes)))),
              (f"Failures (target beyond the top {SHOWN}), seeded sample",
               rng.sample(failures, min(PER_GROUP, len(failures))))]
    if len(methods) > 1:
        image_only = methods[1]
        finite = [r for r in records if rank(r, composed) < math.inf and rank(r, image_only) < math.inf]
        finite.sort(key=lambda r: -abs(math.log(rank(r, composed)) - math.log(rank(r, image_only))))
        groups.append((f"Where {composed} and {image_only} disagree most (log rank)", finite[:PER_GROUP]))
    return [(title, rows) for title, rows in groups if rows]


def similarity_section(block: dict, image_of: Callable[[str], object | None]) -> str:
    """The similarity study's table (evaluation half, paired with cosine) and the queries
    where the methods disagree most, each method's top 5 on its own row."""
    key, metrics = block["headline"], block["metrics"]

    def paired(pair: dict) -> str:
        low, high = pair["interval"]
        return f"{pair['difference']:+.2f} [{low:+.1f}, {high:+.1f}]"

    rows = [[r["method"], *(r["metrics"][m] for m in metrics), paired(r["minus_cosine"][key])] for r in block["rows"]]
    parts = ["<h2>Similarity methods</h2>",
             f"<p>Tuned for {html.escape(key)} on {html.escape(block['tuning']['rule'])}, reported on "
             f"{html.escape(block['evaluation']['rule'])}; {html.escape(block['intervals'])}.</p>",
             table(["method", *metrics, f"{key} minus cosine [95%]"], rows)]
    if block.get("disagreement"):
        parts.append(f"<h3>Where the methods disagree most ({html.escape(key)} per query)</h3>")
    for query in block.get("disagreement", []):
        for method, seen in query["methods"].items():
            record = {**query, "caption": f"{query['caption']} [{method}: {key} {seen['value']:.2f}]",
                      "methods": {method: seen}}
            parts.append(qualitative_row(record, image_of))
    return "\n".join(parts)


def stage_changes(records: list[dict], first: str, second: str) -> list[tuple[str, list[dict]]]:
    """(title, records): the queries whose target the second stage moved up the most, and
    those it moved down the most (1-based ranks; a target outside the gallery skipped)."""
    moved = [(r["methods"][first]["target_rank"], r["methods"][second]["target_rank"], i, r)
             for i, r in enumerate(records)
             if r["methods"][first].get("target_rank") and r["methods"][second].get("target_rank")]
    fixed = sorted((m for m in moved if m[1] < m[0]), key=lambda m: (m[1] - m[0], m[2]))[:PER_GROUP]
    broke = sorted((m for m in moved if m[1] > m[0]), key=lambda m: (m[0] - m[1], m[2]))[:PER_GROUP]
    return [(title, [m[3] for m in group]) for title, group in
            (("What the second stage fixed (target moved up most)", fixed),
             ("What the second stage broke (target moved down most)", broke)) if group]


def rerank_section(block: dict, records: list[dict], image_of: Callable[[str], object | None]) -> str:
    """Both stages side by side and, for the queries the second stage changed most, each
    stage's top 5 on its own row."""
    parts = ["<h2>Two-stage re-ranking</h2>",
             f"<p>{html.escape(block['reranker'])} re-scores each query's first-stage top {block['k']}.</p>"]
    if block.get("stage2"):
        metrics = list(block["stage2"]["metrics"])
        parts.append(table(["", *metrics], [
            ["stage 1", *(block["stage1"]["metrics"][m] for m in metrics)],
            ["stage 2", *(block["stage2"]["metrics"][m] for m in metrics)],
            ["stage 2 minus stage 1 [95%]", *(paired_text(block["stage2_minus_stage1"][m]) for m in metrics)]]))
    first = next(iter(records[0]["methods"])) if records else None
    for title, rows in (stage_changes(records, first, RERANKED) if first else []):
        parts.append(f"<h3>{html.escape(title)}</h3>")
        for record in rows:
            for method in (first, RERANKED):
                parts.append(qualitative_row({**record, "caption": f"{record['caption']} [{method}]",
                                              "methods": {method: record["methods"][method]}}, image_of))
    return "\n".join(parts)


def qualitative_row(record: dict, image_of: Callable[[str], object | None]) -> str:
    method_name = next(iter(record["methods"]))
    method = record["methods"][method_name]

    def thumb(image_id: str, css: str, label: str) -> str:
        image = image_of(image_id)
        # no image (embeddings scored without the images): the id in its place
        picture = (f'<img class="{css}" src="{data_uri(image)}" alt="{html.escape(image_id)}">' if image
                   else f'<div class="missing {css}">{html.escape(image_id)}</div>')
        return f'<div class="cell">{picture}<br>{html.escape(label)}</div>'

    ranks = ", ".join(f"{html.escape(m)}: {v.get('target_rank')}" for m, v in record["methods"].items())
    cells = [thumb(record["reference"], "reference", "reference"),
             f'<div class="caption">“{html.escape(record["caption"])}”<br><small>target rank: {ranks}</small></div>']
    for place, image_id in enumerate(method["top"][:SHOWN], start=1):
        is_target = image_id == record.get("target")
        cells.append(thumb(image_id, "target" if is_target else "", f"{place}" + (" (target)" if is_target else "")))
    if record.get("target") and record["target"] not in method["top"][:SHOWN]:
        cells.append(thumb(record["target"], "target", f"target, rank {method.get('target_rank')}"))
    return f'<div class="row" data-pair-id="{html.escape(str(record["pair_id"]))}">{"".join(cells)}</div>'


def run_html(result: dict, records: list[dict], image_of: Callable[[str], object | None],
             heatmap: Path | None = None) -> str:
    p = result["protocol"]
    title = f"{p['suite']} / {p['split']}, {result['backbone']['name']}"
    parts = [f"<h1>{html.escape(title)}</h1>", "<pre>" + html.escape(run_summary(result)) + "</pre>"]
    fingerprint = p.get("fingerprint")
    if fingerprint:
        parts += ["<h2>Protocol fingerprint</h2>",
                  table(["field", "value"], [[k, v] for k, v in fingerprint.items() if not isinstance(v, dict)])]
        differences = paper_differences(result)
        if differences:
            parts.append("<pre>" + html.escape("\n".join(differences)) + "</pre>")
    if result.get("metrics"):
        parts.append(metrics_section(result))
    parts.append(recall_curve(records))
    if heatmap is not None and heatmap.is_file():
        encoded = base64.b64encode(heatmap.read_bytes()).decode()
        parts += ["<h2>Mixing heat-map</h2>", f'<img src="data:image/png;base64,{encoded}" alt="mixing heat-map" '
                                                'style="max-width: 100%">']
    if result.get("similarity_study"):
        parts.append(similarity_section(result["similarity_study"], image_of))
    if result.get("rerank"):
        parts.append(rerank_section(result["rerank"], records, image_of))
    for group_title, rows in qualitative_groups(records, result.get("seed") or 0):
        parts += [f"<h2>{html.escape(group_title)}</h2>", *(qualitative_row(r, image_of) for r in rows)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style><script>{HEALTH_SCRIPT}</script></head>"
            "<body>\n" + "\n".join(parts) + "\n</body></html>\n")
