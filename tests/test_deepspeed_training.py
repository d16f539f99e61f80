"""Fine-tuning through DeepSpeed ZeRO-2 on 2 gloo ranks (torchrun, DS_ACCELERATOR=cpu)
with gathered negatives and gradient caching reaches the losses and weights of one
plain-torch process on the union batch, and the ranks end with equal weights.
Also: the engine's config is filled from the run, and fp16 is refused on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from harness.config import RunConfig
from harness.core.errors import HarnessError
from harness.pipeline import run
from harness.suites.shapes import ensure_dataset
from harness.suites.shapes_generator import ShapesSpec
from harness.training.deepspeed_engine import engine_config
from tests.conftest import REPO

SPEC = ShapesSpec(seed=6, sets={"train": 16, "val": 8, "test1": 2},
                  queries_per_set={"train": 2, "val": 1, "test1": 1})
# fp32 on both sides: the default's bf16 autocast (one process) is not DeepSpeed's bf16 weights
TRAIN = {"batch_size": 16, "epochs": 1, "lr": 1e-3, "warmup_steps": 0, "seed": 1, "precision": "fp32"}


def _weights(result: dict) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(result["training"]["checkpoint"], "model.safetensors"))


@pytest.mark.slow
def test_two_rank_zero2_matches_one_process_on_the_union_batch(tmp_path):
    root = tmp_path / "shapes"
    ensure_dataset(root, SPEC)
    single = run(RunConfig.resolve({"data_root": str(root), "cache": False, "out": str(tmp_path / "one"),
                                    **TRAIN}), argv=["(single process)"])

    env = {**os.environ, "OMP_NUM_THREADS": "1", "COIR_BENCH_CACHE": str(tmp_path / "cache"),
           "DS_ACCELERATOR": "cpu"}
    args = ["--data-root", str(root), "--no-cache", "--threads", "1", "--out", str(tmp_path / "two"),
            "--deepspeed", "configs/deepspeed/zero2.json", "--grad-cache-chunk", "3",
            *(f"--{k.replace('_', '-')}={v}" for k, v in TRAIN.items())]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "harness.run", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    [path] = list((tmp_path / "two").glob("*.json"))
    sharded = json.loads(path.read_text())
    training = sharded["training"]
    assert training["world_size"] == 2 and training["engine"].startswith("deepspeed")
    assert training["grad_cache_chunk"] == 3
    assert len(set(training["rank_parameter_sha256"])) == 1 and len(training["rank_parameter_sha256"]) == 2
    assert training["step_losses"] == pytest.approx(single["training"]["step_losses"], rel=1e-5)

    # AdamW's first updates are nearly sign(gradient): where a gradient is near zero,
    # rounding flips the sign, so compare the whole update, not single elements.
    from backbones.blip_tiny import build_random

    start = build_random(seed=TRAIN["seed"]).model.state_dict()
    one, two = _weights(single), _weights(sharded)
    moved = torch.cat([(one[k] - start[k]).flatten() for k in one])
    apart = torch.cat([(two[k] - one[k]).flatten() for k in one])
    assert moved.norm() > 1e-2
    assert apart.norm() < 1e-2 * moved.norm(), (apart.norm(), moved.norm())


def test_engine_config_is_filled_from_the_run():
    config = engine_config("configs/deepspeed/zero2.json", "bf16", micro_batch=64, micro_steps=16, grad_clip=1.0)
    assert config["zero_optimization"]["stage"] == 2
    assert config["train_batch_size"] == 1024 and config["gradient_accumulation_steps"] == 16
    assert config["bf16"]["enabled"] and not config["fp16"]["enabled"]
    assert engine_config("configs/deepspeed/zero1.json", "fp16", 8, 1, 0.0)["fp16"]["enabled"]


def test_covr_recipe_defaults_to_zero2_and_hashes_the_config_file(tmp_path):
    config = RunConfig.resolve({"backbone": "blip-large", "suite": "cirr"})
    assert config.deepspeed == "configs/deepspeed/zero2.json" and config.schedule == "epoch"
    assert (config.batch_size, config.lr, config.epochs, config.train_vision) == (1024, 1e-4, 6, False)
    copy = tmp_path / "zero2.json"
    copy.write_text((REPO / "configs/deepspeed/zero2.json").read_text())
    assert RunConfig.resolve({"backbone": "blip-large", "suite": "cirr", "deepspeed": str(copy)}).hash() == config.hash()
    copy.write_text(copy.read_text().replace('"stage": 2', '"stage": 1'))
    assert RunConfig.resolve({"backbone": "blip-large", "suite": "cirr", "deepspeed": str(copy)}).hash() != config.hash()
    # checkpointing cadence and --resume do not change what is computed
    assert RunConfig.resolve({"checkpoint_every": 5, "resume": True}).hash() == RunConfig.resolve({}).hash()


def test_deepspeed_fp16_is_refused_on_cpu():
    from harness.training.deepspeed_engine import DeepSpeedEngine

    with pytest.raises(HarnessError, match="fp16 needs a GPU"):
        DeepSpeedEngine(torch.nn.Linear(2, 2), [], "configs/deepspeed/zero2.json", "fp16", 1e-4, 0.0, 0.0,
                        8, 1, torch.device("cpu"))


@pytest.mark.slow
def test_bf16_training_saves_the_fp32_master_weights(tmp_path):
    """2 ranks, ZeRO-2, bf16: the saved trained weights are the optimizer's fp32 master
    copy (most values not representable in bf16), the frozen ViT its fp32 start."""
    root = tmp_path / "shapes"
    ensure_dataset(root, SPEC)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COIR_BENCH_CACHE": str(tmp_path / "cache"), "DS_ACCELERATOR": "cpu"}
    args = ["--data-root", str(root), "--no-cache", "--threads", "1", "--out", str(tmp_path / "two"),
            "--recipe", "covr", "--train", "--deepspeed", "configs/deepspeed/zero2.json", "--precision", "bf16",
            "--batch-size", "16", "--epochs", "1", "--lr", "1e-3", "--seed", "1"]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "harness.run",
         *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    [path] = list((tmp_path / "two").glob("*.json"))
    saved = _weights(json.loads(path.read_text()))
    from backbones.blip_tiny import build_random

    start = build_random(seed=1).model.state_dict()
    frozen = [k for k in saved if k.startswith(("vision_model.", "vision_proj."))]
    trained = [k for k in saved if k.startswith(("text_encoder.", "text_proj.")) and "embeddings.position_ids" not in k]
    assert frozen and trained
    for key in frozen:
        assert torch.equal(saved[key], start[key]), key  # not rounded to bf16 and back
    values = torch.cat([saved[k].flatten() for k in trained])
    in_bf16 = (values.view(torch.int32) & 0xFFFF) == 0  # the low 16 bits a bf16 copy lacks
    assert in_bf16.float().mean() < 0.1, in_bf16.float().mean()
    moved = torch.cat([(saved[k] - start[k]).flatten() for k in trained])
    assert moved.abs().max() > 0
