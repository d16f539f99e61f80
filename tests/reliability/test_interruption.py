"""Interruption: an embedding extraction stopped part-way (an exception, or kill -9)
resumes from the batches already written, and gives the metrics of a run that was
never interrupted. Files are complete or absent, never half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from backbones.blip import BlipComposer
from backbones.blip_tiny import build_random
from harness.config import RunConfig
from harness.core.atomic import replace_atomically, write_json
from harness.pipeline import run
from tests.conftest import REPO
from tests.reliability.faults import fault

BATCH = 8
ORIGINAL_IMAGE_TOKENS = BlipComposer.image_tokens


class Interrupted(BaseException):
    """Stands in for a signal: not an Exception, so nothing on the way catches it."""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("interruption") / "tiny"
    build_random(seed=11).save(path)
    return path


def config(root: Path, checkpoint: Path, out: Path) -> RunConfig:
    return RunConfig.resolve({"data_root": str(root), "checkpoint": str(checkpoint), "out": str(out),
                              "train": False, "eval_batch_size": BATCH})


def vision_calls(monkeypatch, stop_after: int | None = None) -> list[int]:
    """Count images through the vision tower; raise Interrupted at call `stop_after`."""
    calls = [0, 0]  # images, batches

    def counting(self, pixels):
        calls[1] += 1
        if stop_after is not None and calls[1] > stop_after:
            raise Interrupted
        calls[0] += len(pixels)
        return ORIGINAL_IMAGE_TOKENS(self, pixels)

    monkeypatch.setattr(BlipComposer, "image_tokens", counting)
    return calls


def partial_dirs(cache: Path) -> list[Path]:
    return sorted((cache / "embeddings").glob("*.partial"))


@pytest.fixture(scope="module")
def reference_result(small_shapes, checkpoint, tmp_path_factory):
    """An uninterrupted run, its own cache."""
    out = tmp_path_factory.mktemp("reference")
    mp = pytest.MonkeyPatch()
    mp.setenv("COIR_BENCH_CACHE", str(out / "cache"))
    try:
        return run(config(small_shapes, checkpoint, out), argv=[])
    finally:
        mp.undo()


@fault("Interruption", "extraction stopped after 3 of its batches (an exception no handler catches)",
       "the rerun reads the 3 finished batches back, encodes only the rest, gives identical metrics "
       "and removes the partial folder")
def test_interrupted_extraction_resumes(small_shapes, checkpoint, tmp_path, monkeypatch, reference_result):
    monkeypatch.setenv("COIR_BENCH_CACHE", str(tmp_path / "cache"))
    vision_calls(monkeypatch, stop_after=3)
    with pytest.raises(Interrupted):
        run(config(small_shapes, checkpoint, tmp_path / "out"), argv=[])
    [partial] = partial_dirs(tmp_path / "cache")
    assert len(list(partial.glob("images-*.safetensors"))) == 3

    calls = vision_calls(monkeypatch)
    resumed = run(config(small_shapes, checkpoint, tmp_path / "out"), argv=[])
    timings = resumed["timings"]["embedding"]
    total = reference_result["timings"]["embedding"]["images_encoded"]
    assert timings["cache"] == "resumed" and timings["images_resumed"] == 3 * BATCH
    assert calls[0] == timings["images_encoded"] == total - 3 * BATCH
    assert resumed["metrics"] == reference_result["metrics"]
    assert not partial_dirs(tmp_path / "cache")


@fault("Interruption", "a damaged batch file under its final name, and a writer's leftover temporary file",
       "the damaged batch is recomputed, the temporary file ignored; identical metrics")
def test_damaged_or_temporary_batch_files_are_not_trusted(small_shapes, checkpoint, tmp_path, monkeypatch,
                                                          reference_result):
    monkeypatch.setenv("COIR_BENCH_CACHE", str(tmp_path / "cache"))
    vision_calls(monkeypatch, stop_after=2)
    with pytest.raises(Interrupted):
        run(config(small_shapes, checkpoint, tmp_path / "out"), argv=[])
    [partial] = partial_dirs(tmp_path / "cache")
    first, second = sorted(partial.glob("images-*.safetensors"))
    second.write_bytes(second.read_bytes()[:200])  # as if a copy stopped half-way
    (partial / f".{first.name}.tmp123").write_bytes(b"half a file")

    calls = vision_calls(monkeypatch)
    resumed = run(config(small_shapes, checkpoint, tmp_path / "out"), argv=[])
    assert resumed["timings"]["embedding"]["images_resumed"] == BATCH
    assert calls[0] == reference_result["timings"]["embedding"]["images_encoded"] - BATCH
    assert resumed["metrics"] == reference_result["metrics"]


@fault("Interruption", "a writer dies half-way through an atomic write (results JSON, cache entry)",
       "the previous file is intact and no temporary file is left behind")
def test_atomic_write_never_leaves_half_a_file(tmp_path):
    target = write_json(tmp_path / "result.json", {"R@1": 1.0})

    def dies_half_way(tmp: str) -> None:
        Path(tmp).write_text('{"R@1": 2')
        raise Interrupted

    with pytest.raises(Interrupted):
        replace_atomically(target, dies_half_way)
    assert json.loads(target.read_text()) == {"R@1": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


KILLED_RUN = textwrap.dedent("""
    import sys, time
    from backbones.blip import BlipComposer
    from harness.config import RunConfig
    from harness.pipeline import run

    original = BlipComposer.image_tokens

    def slow(self, pixels):  # long enough for the test to kill it mid-extraction
        time.sleep(0.5)
        return original(self, pixels)

    BlipComposer.image_tokens = slow
    root, checkpoint, out, batch = sys.argv[1:5]
    run(RunConfig.resolve({"data_root": root, "checkpoint": checkpoint, "out": out, "train": False,
                           "eval_batch_size": int(batch)}), argv=[])
""")


@pytest.mark.slow
@fault("Interruption", "kill -9 of `harness.run` during embedding extraction (after 2 batches are written)",
       "the rerun resumes from the batches on disk (none re-encoded) and gives identical metrics")
def test_kill_9_during_extraction(small_shapes, checkpoint, tmp_path, monkeypatch, reference_result):
    cache = tmp_path / "cache"
    env = {**os.environ, "COIR_BENCH_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, str(small_shapes), str(checkpoint), str(tmp_path / "out"), str(BATCH)],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            written = [f for d in partial_dirs(cache) for f in d.glob("images-*.safetensors")]
            if len(written) >= 2:
                break
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
    assert process.wait(30) == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    [partial] = partial_dirs(cache)
    done = len(list(partial.glob("images-*.safetensors")))
    batches = -(-reference_result["timings"]["embedding"]["images_encoded"] // BATCH)
    assert 2 <= done < batches, "killed mid-extraction"

    monkeypatch.setenv("COIR_BENCH_CACHE", str(cache))
    calls = vision_calls(monkeypatch)
    resumed = run(config(small_shapes, checkpoint, tmp_path / "out"), argv=[])
    timings = resumed["timings"]["embedding"]
    assert timings["images_resumed"] == done * BATCH
    assert calls[0] == reference_result["timings"]["embedding"]["images_encoded"] - done * BATCH
    assert resumed["metrics"] == reference_result["metrics"]
    assert not partial_dirs(cache)


def test_resumed_embeddings_are_bitwise_equal(small_shapes, checkpoint, tmp_path, monkeypatch):
    """Batches keep their boundaries on a rerun: resumed tensors equal uninterrupted ones exactly."""
    from harness.evaluation import embedding_cache
    from harness.evaluation.embed import embed_split
    from harness.suites import SUITES

    data = SUITES.get("shapes")(small_shapes).load("val")
    backbone = build_random(seed=11)
    whole = embed_split(backbone, data, torch.device("cpu"), "fp32", BATCH)
    vision_calls(monkeypatch, stop_after=4)
    with pytest.raises(Interrupted):
        embedding_cache.cached_embed(lambda p: embed_split(backbone, data, torch.device("cpu"), "fp32", BATCH, p),
                                     backbone, data, "fp32", tmp_path)
    vision_calls(monkeypatch)
    resumed = embedding_cache.cached_embed(
        lambda p: embed_split(backbone, data, torch.device("cpu"), "fp32", BATCH, p), backbone, data, "fp32", tmp_path)
    assert resumed.timings["images_resumed"] == 4 * BATCH
    for name in ("gallery", "composed", "image", "text"):
        assert torch.equal(getattr(resumed, name), getattr(whole, name)), name
