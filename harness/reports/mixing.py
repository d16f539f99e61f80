"""Tables of the mixed-embedding extension (a run's `mixing` block, harness/mixing/step.py)
and of the mixing sweep timing (harness/mix_timing.py), from result files only."""

from __future__ import annotations

from pathlib import Path

from tabulate import tabulate

from harness.core.provenance import describe_machine
from harness.evaluation.metrics import CIRR_METRICS
from harness.reports.header import section_header


def _weights(weights) -> str:
    return "" if weights is None else "(" + ", ".join(f"{w:.2f}" for w in weights) + ")"


def mixing_markdown(block: dict, heatmap_dir: Path | None = None) -> list[str]:
    """Lines: the protocol, every row's metrics on the evaluation set, the per-metric
    choice (weights best on tuning, value on tuning and evaluation, f alone beside it),
    the learned weights, the heat-map link (under `heatmap_dir` if given) and timings."""
    ev = block["evaluation"]
    metrics = block.get("metrics", CIRR_METRICS)
    rows = [[r["method"], _weights(r["weights"]), *(r["metrics"][m] for m in metrics)] for r in block["rows"]]
    lines = ["### Mixed embeddings m = w0·q + w1·t + w2·f(q,t)", "", *_conditions(block),
             "", f"Evaluation set ({ev['queries']} queries), weights (w0 q, w1 t, w2 f):", "",
             tabulate(rows, headers=["method", "weights", *metrics], tablefmt="github",
                      floatfmt=".2f", missingval=""), ""]
    lines += _per_metric_choice(block["rows"])
    if block.get("heatmap"):
        where = (heatmap_dir / block["heatmap"]).as_posix() if heatmap_dir is not None else block["heatmap"]
        lines += [f"Heat-map of {_panels(block, metrics)} over the simplex (tuning and evaluation sets): "
                  f"[{block['heatmap']}]({where})", "", f"![mixing heat-map]({where})", ""]
    return lines


def _panels(block: dict, metrics: list[str]) -> str:
    """The heat-map's metrics in words (harness/mixing/heatmap.py `panels_of`; older
    result files do not name them: CIRR's R@1, R@5 and Avg, or R@10 without Avg)."""
    panels = block.get("heatmap_metrics") or ["R@1", "R@5", "Avg" if "Avg" in metrics else "R@10"]
    return ", ".join(panels[:-1]) + " and " + panels[-1] if len(panels) > 1 else panels[0]


def _conditions(block: dict) -> list[str]:
    """Where the weights were chosen and reported, the machine, the sweep and the learning."""
    tune, ev = block["tuning"], block["evaluation"]
    timings = block.get("timings", {})
    lines = [
        f"- weights chosen on **{tune['split']}** ({tune['rule']}; {tune['queries']} queries over "
        f"{tune['gallery_images']} images, pair ids sha256 {tune['pair_ids_sha256'][:12]}), reported on "
        f"**{ev['split']}** ({ev['rule']}; {ev['queries']} queries over {ev['gallery_images']} images, "
        f"pair ids sha256 {ev['pair_ids_sha256'][:12]})",
    ]
    if block.get("scoring"):
        pooling = (f"; BLIP-2 token means (token pooling {block['token_pooling']}: tokens normalised, averaged, "
                   "not re-normalised), the gallery's as the protocol scores them" if block.get("token_pooling") else "")
        lines.append(f"- scored by the {block['scoring']} protocol, as the run's own metrics{pooling}; q, t and f "
                     "each L2-normalised before mixing")
    if "hardware" in block:
        lines.append(f"- mixing computed on: {describe_machine(block['hardware'])}"
                     + (f" (load average {block['load_average_1min']:.1f} at the end)"
                        if "load_average_1min" in block else ""))
    if "sweep" in block:
        sweep = block["sweep"]
        lines.append(
            f"- sweep: {sweep['triples']} triples (step {sweep['step']}), every metric per triple: "
            f"{timings.get('sweep_tuning_seconds', float('nan')):.2f} s on tuning, "
            f"{timings.get('sweep_evaluation_seconds', float('nan')):.2f} s on evaluation"
        )
    learned = block.get("learned")
    if learned:
        lines.append(
            f"- learned: w = softmax(theta) = {_weights(learned['weights'])}, {learned['loss']} "
            f"(temperature {learned['temperature']}, beta {learned['beta']}) on {learned['pairs']} tuning "
            f"pairs, batch {learned['batch']}, {learned['steps']} Adam steps (lr {learned['lr']}), loss "
            f"{learned['loss_first']:.3f} -> {learned['loss_last']:.3f}, {learned['seconds']:.2f} s"
        )
    return lines


def _per_metric_choice(rows: list[dict]) -> list[str]:
    """Each metric's best triple on tuning, its value on evaluation beside f alone and learned."""
    chosen = [r for r in rows if r.get("chosen_for")]
    if not chosen:
        return []
    base = next(r for r in rows if r["method"] == "f alone")
    learned_row = next((r for r in rows if r["method"].startswith("learned")), None)
    table = []
    for r in chosen:
        m = r["chosen_for"]
        table.append([m, _weights(r["weights"]), r["tuning"][m], r["metrics"][m], base["metrics"][m],
                      r["metrics"][m] - base["metrics"][m], _paired(r, m),
                      learned_row["metrics"][m] if learned_row else None])
    return [
        "Per metric: the triple that maximises it on the tuning set, and its value on the "
        "evaluation set beside f alone and the learned weights; the 95% interval of the "
        "difference is a paired bootstrap over the evaluation queries (a gain is beyond "
        "query noise when it excludes 0):",
        "",
        tabulate(table, headers=["metric", "best weights (tuning)", "tuning", "evaluation",
                                 "f alone (eval)", "Δ vs f", "95% interval of Δ", "learned (eval)"],
                 tablefmt="github", floatfmt=".2f", missingval=""),
        "",
    ]


def _paired(row: dict, metric: str) -> str | None:
    paired = row.get("minus_f_alone", {}).get(metric)
    return f"[{paired['interval'][0]:+.2f}, {paired['interval'][1]:+.2f}]" if paired else None


def mix_timing_section(path: Path, result: dict) -> list[str]:
    rows = [[r["what"], r["triples"], r["queries"], r["gallery_images"], r["median_seconds"],
             r["min_seconds"], r["repeats"]] for r in result["rows"]]
    load = result.get("load_average_1min")
    return [
        *section_header(
            f"Mixing sweep timing, {result['protocol']['suite']} {result['protocol']['split']} "
            f"(real annotations, stand-in images), {result['hardware']['device']}", result, path,
            machine_note=(f"; load average (1 min) {load['before']:.1f} before, {load['after']:.1f} after" if load else "")
            + (f"; {result['note']}" if result.get("note") else ""),
            remark=f"backbone {result['backbone']['name']} ({result['backbone']['checkpoint']})",
            lines=[f"- embedding the split (tiny model, stand-in images): {result['embedding_seconds']:.1f} s"]),
        tabulate(rows, headers=["what", "triples", "queries", "gallery", "median s", "min s", "repeats"],
                 tablefmt="github", floatfmt=".3f"),
        "",
    ]
