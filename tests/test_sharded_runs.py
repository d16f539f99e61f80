"""torchrun, 2 gloo ranks, on the CIRR stand-in: `harness.run` and `harness.score` split
the gallery across the ranks for rank counts, top-K and the mixing sweep
(harness/evaluation/shard_scoring.py) and write one process's files byte for byte
(results but for what says when, how and on how many ranks; the per-query file; the
server files; the embeddings, extracted in one process's batches), and the results
say the gallery was sharded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.suites import SUITES
from tests.conftest import REPO

VOLATILE = ("date", "command", "timings", "load_average_1min", "gallery_shards", "out")  # when, how, how fast, how many ranks


def launch(tmp_path: Path, ranks: int, module: str, *args: str) -> None:
    """`python -m module args` in one process, or under torchrun on `ranks` gloo ranks."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COIR_BENCH_CACHE": str(tmp_path / "cache")}
    start = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] \
        if ranks > 1 else [sys.executable]
    proc = subprocess.run([*start, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def comparable(value, folder: Path):
    """A results file without its VOLATILE fields, at any depth, and its output folder named "<out>"."""
    if isinstance(value, dict):
        return {k: comparable(v, folder) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [comparable(v, folder) for v in value]
    return value.replace(str(folder), "<out>") if isinstance(value, str) else value


def assert_same_outputs(one: Path, two: Path, binary: tuple[str, ...]) -> tuple[dict, dict]:
    """The same files in both folders (rank 0 alone wrote), the `binary` suffixes byte for
    byte, the results equal but for VOLATILE fields; both results."""
    names = sorted(p.name for p in one.iterdir())
    assert names == sorted(p.name for p in two.iterdir())
    for name in names:
        if name.endswith(binary):
            assert (one / name).read_bytes() == (two / name).read_bytes(), name
        if name.endswith(".safetensors"):  # its metadata's key order varies from process to process
            assert same_tensors(one / name, two / name), name
    [result] = [n for n in names if n.endswith(".json") and "submission" not in n]
    first, second = (json.loads((folder / result).read_text()) for folder in (one, two))
    assert comparable(first, one) == comparable(second, two)
    return first, second


def same_tensors(a: Path, b: Path) -> bool:
    """The same tensors, bit for bit, and the same metadata in two safetensors files."""
    from safetensors import safe_open

    with safe_open(str(a), framework="pt") as x, safe_open(str(b), framework="pt") as y:
        return x.metadata() == y.metadata() and set(x.keys()) == set(y.keys()) and all(
            torch.equal(x.get_tensor(k).view(torch.int32), y.get_tensor(k).view(torch.int32)) for k in x.keys())


@pytest.mark.slow
def test_two_ranks_run_cirr_val_as_one_process(cirr_root, tmp_path):
    common = ["--suite", "cirr", "--data-root", str(cirr_root), "--split", "val", "--no-train", "--no-cache",
              "--threads", "1", "--mix", "sweep", "--mix-step", "0.25", "--save-embeddings"]
    launch(tmp_path, 1, "harness.run", *common, "--out", str(tmp_path / "one"))
    launch(tmp_path, 2, "harness.run", *common, "--out", str(tmp_path / "two"))
    one, two = assert_same_outputs(tmp_path / "one", tmp_path / "two", (".queries.jsonl",))
    assert one["metrics"] and one["mixing"]["sweep"]["triples"] == 15
    assert one["gallery_shards"] == one["mixing"]["gallery_shards"] == {"gallery_sharded": False, "ranks": 1}
    assert two["gallery_shards"] == two["mixing"]["gallery_shards"] == {"gallery_sharded": True, "ranks": 2}
    assert two["timings"]["embedding"]["ranks"] == 2


def random_embeddings(cirr_root: Path, split: str, path: Path) -> Path:
    """Seeded embeddings for the split's ids, with copies of gallery rows across the two
    shards (one of them a target's) and reversed id order."""
    data = SUITES.get("cirr")(cirr_root).load(split)
    rng = np.random.default_rng(7)
    gallery = rng.standard_normal((len(data.gallery), 32)).astype(np.float32)
    gallery[-5:] = gallery[:5]
    index = {g: i for i, g in enumerate(data.gallery)}
    if data.queries[0].target:
        gallery[-6] = gallery[index[data.queries[0].target]]
    queries = {name: rng.standard_normal((len(data.queries), 32)).astype(np.float32)
               for name in ("composed", "image", "text")}
    np.savez(path, gallery=gallery[::-1], gallery_ids=np.array(list(data.gallery)[::-1]),
             pair_ids=np.array([q.pair_id for q in data.queries]), **queries)
    return path


@pytest.mark.slow
def test_two_ranks_score_embeddings_as_one_process(cirr_root, tmp_path):
    for split, binary in (("val", (".queries.jsonl",)), ("test1", ("_submission.json",))):
        embeddings = random_embeddings(cirr_root, split, tmp_path / f"{split}.npz")
        common = ["--suite", "cirr", "--data-root", str(cirr_root), "--split", split, "--embeddings", str(embeddings)]
        launch(tmp_path, 1, "harness.score", *common, "--out", str(tmp_path / f"one-{split}"))
        launch(tmp_path, 2, "harness.score", *common, "--out", str(tmp_path / f"two-{split}"))
        one, two = assert_same_outputs(tmp_path / f"one-{split}", tmp_path / f"two-{split}", binary)
        assert one["gallery_shards"] == {"gallery_sharded": False, "ranks": 1}
        assert two["gallery_shards"] == {"gallery_sharded": True, "ranks": 2}
        assert (one["metrics"] is None) == (split == "test1")
