"""BENCHMARKS.md section for scoring results (benches/scoring_suite.py files)."""

from __future__ import annotations

from pathlib import Path

from tabulate import tabulate

from harness.reports.header import section_header

# Against which provider each label's speed-up is read: the peers of the issue, and
# faiss given the AVX-512 kernels our fp32 path may take (benches/scoring_job.py).
PEERS = ("faiss", "faiss-avx512", "torch-mm-topk", "recompute-sweep")


def scoring_section(path: Path, result: dict) -> list[str]:
    rows, notes = [], []
    by_label: dict[str, list[dict]] = {}
    for row in result["rows"]:
        if not row.get("computed"):  # computed rows have a table of their own
            by_label.setdefault(row["label"], []).append(row)
    for label, group in by_label.items():
        for r in group:
            if "error" in r:
                rows.append([label, r["provider"], "failed: " + r["error"].splitlines()[-1][:80]])
                continue
            rows.append([
                label, r["provider"], r["dtype"], r.get("triples", 1), r["seconds"], r["queries_per_s"],
                r["effective_tflop_per_s"], r["effective_gb_per_s"], 100 * r["roofline_fraction"],
                r["recall"]["R@1"], r["recall"]["R@50"],
            ])
        notes += _comparisons(label, [r for r in group if "error" not in r])
        notes += _kernels(label, [r for r in group if "error" not in r])
    layout = "rows one after another in one process" if result.get("jobs_in_process") else "each row its own process"
    return [
        *section_header(
            f"Scoring: fused rank counts and top-K against peers, {result['hardware'].get('device', 'cpu')}",
            result, path, remark=f"plan `{result['plan']}`",
            lines=[f"- {layout}; time of the scoring call alone (best of the repeats); data: unit "
                   "vectors, each query its target plus noise, one other item excluded per query (as CIRR's "
                   "reference); roofline % = T_min / time with T_min = max(2QGD / peak, bytes / bandwidth)"]),
        tabulate(rows, headers=["problem", "provider", "dtype", "triples", "seconds", "queries/s",
                                "eff. TFLOP/s", "eff. GB/s", "roofline %", "R@1", "R@50"],
                 tablefmt="github", floatfmt=".4g"),
        "",
        *notes,
        "",
        *computed_table([row for row in result["rows"] if row.get("computed")]),
    ]


def computed_table(rows: list[dict]) -> list[str]:
    """Rows computed from stated machine figures, not measured (benches/shard_plan.py):
    a gallery split over N devices, each rank's bytes and roofline time."""
    if not rows:
        return []
    table = [[r["label"], r["ranks"], r["gallery_rows_per_rank"], r["shard_bytes_per_rank"] / 1e9,
              r["bytes_held_per_rank"] / 1e9, r["roofline_per_rank"]["compute_s"], r["roofline_per_rank"]["memory_s"],
              r["exchange_bytes_per_rank"] / 1e6, r["seconds_per_rank"], r["one_device"]["t_min_s"],
              r["speedup_over_one_device"]] for r in rows]
    sources = sorted({r["limits_source"] for r in rows})
    return [
        "Computed, not measured (benches/shard_plan.py): each rank scores a contiguous shard of the gallery "
        "(harness/evaluation/sharded.py); its time is the roofline floor max(2 Q G_r D / peak, bytes / bandwidth) "
        "plus the exchange (positive rows, summed counts, top-K candidates) at the link rate; limits: "
        + "; ".join(sources),
        "",
        tabulate(table, headers=["problem (computed)", "ranks", "rows per rank", "shard GB per rank",
                                 "GB held per rank", "compute s per rank", "memory s per rank", "exchange MB",
                                 "s per rank", "one device s", "speed-up"], tablefmt="github", floatfmt=".4g"),
        "",
    ]


def _kernels(label: str, group: list[dict]) -> list[str]:
    """Which GEMM each CPU row ran: our plan's library and tile, faiss's OpenBLAS kernels."""
    used = [f"{r['provider']} {r['gemm']['library']} {r['gemm']['query_rows']}x{r['gemm']['gallery_columns']}"
            if "gemm" in r else f"{r['provider']} OpenBLAS {r['blas_core']} kernels"
            for r in group if "gemm" in r or r.get("blas_core")]
    return [f"- {label}: GEMMs: {'; '.join(used)}"] if used else []


def _comparisons(label: str, group: list[dict]) -> list[str]:
    ours = [r for r in group if r["provider"] not in PEERS]
    lines = []
    for peer in (r for r in group if r["provider"] in PEERS):
        for mine in ours:
            same = mine["recall"] == peer["recall"]
            lines.append(
                f"- {label}: {mine['provider']} {peer['seconds'] / mine['seconds']:.2f}x the speed of "
                f"{peer['provider']} ({mine['seconds']:.3g} s vs {peer['seconds']:.3g} s); Recall@K "
                f"{'identical' if same else 'DIFFERENT'}"
            )
    return lines
