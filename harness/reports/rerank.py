"""Tables of a run's second stage (the `rerank` block, harness/rerank/step.py) and of
the same over seeds, from result files only."""

from __future__ import annotations

import statistics

from tabulate import tabulate


def paired_text(pair: dict) -> str:
    low, high = pair["interval"]
    return f"{pair['difference']:+.2f} [{low:+.2f}, {high:+.2f}]"


def fusion_text(fusion: dict) -> str:
    if fusion["alpha"] is None:
        return "the re-ranker's scores alone"
    how = "tuned on the first half" if fusion["rule"] == "tuned" else "fixed"
    return f"alpha {fusion['alpha']} x stage 1 + (1 - alpha) x sigmoid(stage 2), alpha {how}"


def cost_line(block: dict) -> str:
    cost = block["cost"]
    return (f"- cost: {cost['cross_encoder_pairs']} cross-encoder pairs for {cost['queries']} queries in "
            f"{cost['seconds']:.1f} s ({cost['queries_per_second']:.1f} queries/s, {cost['pairs_per_second']:.0f} "
            f"pairs/s, {cost['vision_images_encoded']} images through the ViT, {cost['ranks']} rank(s))")


def rerank_markdown(block: dict) -> list[str]:
    """Lines: the re-ranker and K, both stages on the same queries, the paired difference."""
    lines = ["### Two-stage re-ranking", "",
             f"- {block['reranker']} re-scores each query's first-stage top {block['k']} "
             f"(weights {block['checkpoint']}, sha256 {str(block['checkpoint_sha256'])[:12]}); "
             f"order: {fusion_text(block['fusion'])}", cost_line(block)]
    training = block.get("training")
    if training:
        lines.append(f"- trained {training['epochs']} epoch(s), {training['steps']} steps of {training['batch_size']} "
                     f"queries with {training['negatives']['per_query']} hard negatives each, "
                     f"{training['seconds']:.0f} s, loss per epoch "
                     + ", ".join(f"{x:.3f}" for x in training["loss_curve"]))
    if "stage2" not in block:
        files = block.get("server_files") or {}
        return [*lines, f"- server files from the final ranking: {', '.join(files.values())}", ""]
    key = block["headline"]
    lines += [f"- evaluated on {block['evaluated']} ({block['queries']} queries); the target is in the top "
              f"{block['k']} for {block['target_in_top_k']:.2f}% of them (stage 2's ceiling); "
              f"{block['changed']['improved']} queries improved and {block['changed']['worsened']} worsened on {key}",
              f"- intervals: {block['intervals']}", ""]
    metrics = list(block["stage2"]["metrics"])
    rows = [["stage 1 (first stage)", *(f"{block['stage1']['metrics'][m]:.2f}" for m in metrics)],
            [f"stage 2 ({block['reranker']})", *(f"{block['stage2']['metrics'][m]:.2f}" for m in metrics)],
            ["stage 2 minus stage 1 [95%]", *(paired_text(block["stage2_minus_stage1"][m]) for m in metrics)]]
    return [*lines, tabulate(rows, headers=["", *metrics], tablefmt="github", disable_numparse=True), ""]


def rerank_over_seeds(results: list[dict]) -> list[str]:
    """R@1 and the headline metric over the seeds of a two-stage recipe; nothing without
    a second stage scored on every seed."""
    if len(results) < 2 or not all(r.get("rerank", {}).get("stage2") for r in results):
        return []
    metrics = dict.fromkeys([next(iter(results[0]["rerank"]["stage2"]["metrics"])), results[0]["rerank"]["headline"]])
    return [line for metric in metrics for line in rerank_seeds_lines(results, metric)]


def rerank_seeds_lines(results: list[dict], metric: str) -> list[str]:
    """Both stages of `metric` per seed, the paired difference, mean and sd, and how many
    seeds the re-ranker helped beyond query noise (the paired interval above zero)."""
    blocks = [(r["seed"], r["rerank"]) for r in results]
    rows, differences = [], []
    for seed, block in blocks:
        pair = block["stage2_minus_stage1"][metric]
        differences.append(pair["difference"])
        rows.append([seed, f"{block['stage1']['metrics'][metric]:.2f}", f"{block['stage2']['metrics'][metric]:.2f}",
                     paired_text(pair),
                     "yes" if pair["interval"][0] > 0 else "no", f"{block['cost']['queries_per_second']:.1f}"])
    helped = sum(row[4] == "yes" for row in rows)
    spread = statistics.stdev(differences) if len(differences) > 1 else 0.0
    return [f"Two-stage re-ranking, {metric} per seed ({blocks[0][1]['reranker']}, top {blocks[0][1]['k']}): "
            f"stage 2 minus stage 1 {statistics.mean(differences):+.2f} ± {spread:.2f} (mean ± sd); the paired "
            f"interval is above zero on {helped} of {len(rows)} seeds", "",
            tabulate(rows, headers=["seed", "stage 1", "stage 2", "difference [95%]", "helped beyond noise",
                                    "re-ranked queries/s"], tablefmt="github", disable_numparse=True), ""]
