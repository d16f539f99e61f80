"""Ternary heat-maps of a mixing sweep (harness/mixing/sweep.py): three of the suite's
own metrics over the weight simplex (the block's `heatmap_metrics`, each mixing
adapter's `panels`: CIRR R@1, R@5, Avg; WebVid-CoVR R@1, R@5, R@10; FashionIQ
avg R@10, avg R@50, Avg; CIRCO mAP@5, mAP@10, mAP@50), on the tuning set (top row)
and the evaluation set (bottom row).

Each triangle's corners are q alone (bottom left), t alone (bottom right) and f(q, t)
alone (top); a point's distance from the opposite side is its weight. The star marks
the tuning set's best triple for that metric, the diamond the learned weights.
Written with matplotlib's Agg backend (no display needed). A run with `--mix sweep`
writes it beside its results; it is redrawn from a result file alone with

    python -m harness.mixing.heatmap results/reference/<run>.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.tri as mtri  # noqa: E402

from harness.core.atomic import replace_atomically  # noqa: E402
from harness.mixing.grid import best_index  # noqa: E402

PANELS = ("R@1", "R@5", "Avg")  # result files written before blocks named their heat-map metrics
VIDEO_PANELS = ("R@1", "R@5", "R@10")  # no image sets, so no Avg (WebVid-CoVR)
CORNERS = {"q": (0.0, 0.0), "t": (1.0, 0.0), "f(q,t)": (0.5, math.sqrt(3) / 2)}


def to_xy(weights) -> tuple[list[float], list[float]]:
    """Barycentric (w0, w1, w2) -> the plane: q at (0, 0), t at (1, 0), f at the top."""
    xs = [w1 + w2 / 2 for _, w1, w2 in weights]
    ys = [w2 * math.sqrt(3) / 2 for _, _, w2 in weights]
    return xs, ys


def panels_of(block: dict) -> list[str]:
    """The metrics a block's heat-map shows: those it names, else (older result
    files, CIRR-protocol metrics) R@1, R@5 and Avg, or R@10 without Avg."""
    if block.get("heatmap_metrics"):
        return list(block["heatmap_metrics"])
    return list(PANELS if "Avg" in block.get("metrics", PANELS) else VIDEO_PANELS)


def write_heatmap(block: dict, path: Path, title: str, machine: str) -> Path:
    sweep = block["sweep"]
    xs, ys = to_xy(sweep["weights"])
    triangulation = mtri.Triangulation(xs, ys)
    learned = block.get("learned", {}).get("weights")
    sets = (("tuning", block["tuning"]), ("evaluation", block["evaluation"]))
    panels = panels_of(block)
    fig, axes = plt.subplots(len(sets), len(panels), figsize=(4.2 * len(panels), 3.9 * len(sets)), squeeze=False)
    for row, (name, described) in enumerate(sets):
        for col, metric in enumerate(panels):
            ax = axes[row][col]
            values = sweep[name][metric]
            image = ax.tripcolor(triangulation, values, shading="gouraud", cmap="viridis")
            fig.colorbar(image, ax=ax, shrink=0.8, label=f"{metric} (%)")
            best = best_index(sweep["tuning"][metric])
            bx, by = to_xy([sweep["weights"][best]])
            ax.plot(bx, by, marker="*", color="red", markersize=13, markeredgecolor="white",
                    linestyle="none", label="best on tuning")
            if learned:
                lx, ly = to_xy([learned])
                ax.plot(lx, ly, marker="D", color="orange", markersize=7, markeredgecolor="black",
                        linestyle="none", label="learned")
            for label, (cx, cy) in CORNERS.items():
                ax.annotate(label, (cx, cy), ha="center", va="top" if cy == 0 else "bottom",
                            xytext=(0, -4 if cy == 0 else 4), textcoords="offset points", fontsize=9)
            ax.plot([0, 1, 0.5, 0], [0, 0, math.sqrt(3) / 2, 0], color="black", linewidth=0.6)
            ax.set_title(f"{metric} on {name} ({described['queries']} queries)", fontsize=10)
            ax.set_aspect("equal")
            ax.set_xlim(-0.08, 1.08)
            ax.set_ylim(-0.1, 0.96)
            ax.axis("off")
            if row == 0 and col == 0:
                ax.legend(loc="upper left", fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.text(0.5, 0.005, f"machine: {machine}; grid step {sweep['step']} ({sweep['triples']} triples); "
             "corners: one part alone", ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.02, 1, 0.96))
    path = Path(path)
    replace_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def title_of(config: dict, block: dict) -> str:
    return (f"{config['suite']}/{config['split']}, {config['backbone']}: m = w0 q + w1 t + w2 f(q,t), "
            f"tuned on {block['tuning']['split']} ({config.get('tune_split', 'heldout-half')})")


def main(argv: list[str] | None = None) -> int:
    from harness.core.provenance import describe_machine

    parser = argparse.ArgumentParser(prog="python -m harness.mixing.heatmap", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+", help="result files of runs with --mix sweep")
    args = parser.parse_args(argv)
    for result_path in args.results:
        result = json.loads(result_path.read_text())
        block = result.get("mixing") or {}
        if "sweep" not in block:
            print(f"{result_path}: no mixing sweep, skipped")
            continue
        path = result_path.parent / block["heatmap"]
        write_heatmap(block, path, title_of(result["config"], block), describe_machine(block["hardware"]))
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
