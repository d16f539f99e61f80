"""Fine-tuning in reports: the per-run line on engine, batch layout and memory,
the table comparing the fine-tuned runs of a results folder, and the section of
GPU training-step measurements (benches/train_step_gpu.py)."""

from __future__ import annotations

from pathlib import Path

from tabulate import tabulate

from harness.core.provenance import describe_machine
from harness.reports.header import section_header

MIB = 1 << 20


def training_line(training: dict) -> str | None:
    """Engine, ranks, gradient caching and memory; None for results older than these fields."""
    if "engine" not in training:
        return None
    chunk = training.get("grad_cache_chunk")
    return (
        f"engine {training['engine']}, {training['world_size']} rank(s), "
        + (f"gradient caching in chunks of {chunk}, " if chunk else "one graph per batch, ")
        + f"loss {training['loss']}, "
        + ("constant learning rate" if training["schedule"] == "constant" else f"schedule per {training['schedule']}")
        + (", targets cached" if training.get("targets_cached") else "")
        + f"; peak memory {training['peak_memory_bytes'] / MIB:.0f} MiB"
        f" (process peak RSS on CPU, allocated on CUDA), autograd graph {training['peak_graph_bytes'] / MIB:.1f} MiB"
        + (f"; resumed from step {training['resumed_from_step']}" if training.get("resumed_from_step") else "")
    )


def recorded_precision(training: dict, config: dict) -> str:
    """What the steps ran in; results older than the field trained in --precision (auto: fp32)."""
    return training.get("precision") or ("fp32" if config.get("precision", "auto") == "auto" else config["precision"])


def training_table(results: list[tuple[Path, dict]]) -> list[str]:
    """One row per fine-tuned run that records its engine (newer results)."""
    rows = []
    for path, result in results:
        training = result.get("training") or {}
        if "engine" not in training or not result.get("metrics"):
            continue
        composed = next(iter(result["metrics"].values()))
        config = result["config"]
        start = Path(config["checkpoint"]).name if config.get("checkpoint") else "random init"
        rows.append([
            path.name, start, training["train_queries"], training["batch_size"], training.get("grad_cache_chunk") or "-",
            f"{config['lr']:g}", config["warmup_steps"], training["epochs"], training["steps"],
            f"{training['loss_curve'][-1]:.3f}", recorded_precision(training, config), training["seconds"],
            result.get("timings", {}).get("total_seconds"), training["samples_per_second"],
            training["peak_memory_bytes"] / MIB, training["peak_graph_bytes"] / MIB,
            composed.get("R@1"), composed.get("R@5"), composed.get("R@10"),
            describe_machine(result["hardware"]),
        ])
    if not rows:
        return []
    return [
        "## Fine-tuning runs compared",
        "",
        "Every fine-tuned run of this folder that records its engine; recall is the first metrics row "
        "(composed f(q,t)). Peak RSS is the whole process (data included) on CPU; the graph column is "
        "the largest set of activations autograd saved for one backward pass, which is what the batch "
        "size or the gradient-cache chunk bounds. \"train s\" is the fine-tuning, \"run s\" the whole "
        "run in its process (data, training, evaluation, files). Times and samples/s depend on what else "
        "the machine was running (see each run's section). \"starts from\" is the checkpoint fine-tuned (a run "
        "of this folder), or random initialisation.",
        "",
        tabulate(rows, headers=["result", "starts from", "train queries", "batch", "chunk", "lr", "warm-up", "epochs", "steps",
                                "last loss", "precision", "train s", "run s", "samples/s", "peak RSS MiB", "graph MiB", "R@1", "R@5",
                                "R@10", "machine"],
                 tablefmt="github", floatfmt=".2f", disable_numparse=[5]),  # lr as written
        "",
    ]


def train_step_section(path: Path, result: dict) -> list[str]:
    """benches/train_step_gpu.py output: samples/s and peak memory per configuration."""
    rows = [[r["name"], r["batch_size"], r.get("grad_cache_chunk") or "-", r["precision"], r["zero_stage"],
             r["samples_per_second"], r["peak_memory_bytes"] / MIB, r.get("status", "ok")]
            for r in result["rows"]]
    return [
        *section_header(f"Training steps, {result['backbone']} at real size, {result['hardware']['device']}",
                        result, path, packages=("torch", "deepspeed"),
                        remark="random weights, random pixels and captions (speed and memory do not depend on them)"),
        tabulate(rows, headers=["configuration", "batch", "chunk", "precision", "ZeRO", "samples/s",
                                "peak MiB", "status"], tablefmt="github", floatfmt=".1f"),
        "",
    ]


def train_profile_section(path: Path, result: dict) -> list[str]:
    """benches/train_profile.py output: the loop's samples/s and the optimizer step alone."""
    loop, load = result["loop"], result["load_average_1min"]
    rows = [[r["optimizer"], r["median_ms"], r["min_ms"], r["tensors"], r["parameters"]]
            for r in result["optimizer_step"]]
    return [
        *section_header(f"Fine-tuning step profile, blip-tiny, {result['hardware']['device']}", result, path,
                        machine_note=f"; load average (1 min) {load['before']:.1f} before, {load['after']:.1f} after",
                        lines=[f"- the default loop: {loop['samples_per_second']:.0f} samples/s over {loop['steps']} "
                               f"steps of batch {loop['batch_size']}, {loop.get('precision', 'fp32')} "
                               "(fused AdamW, harness/training/torch_engine.py)"]),
        tabulate(rows, headers=["AdamW step", "median ms", "min ms", "tensors", "parameters"], tablefmt="github",
                 floatfmt=".2f"),
        "",
    ]
