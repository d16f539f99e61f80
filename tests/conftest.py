"""Shared fixtures. Torch runs on at most 2 threads: more fight the other process
on a 2-core machine and make tiny forward passes far slower."""

from __future__ import annotations

import os

# Triton fixes interpreter mode at its first import (transformers imports it early):
# CPU runs test the kernels in the interpreter. GPU runs: TRITON_INTERPRET=0 pytest -m gpu.
os.environ.setdefault("TRITON_INTERPRET", "1")

import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("COIR_SHARED", REPO.parent / "shared"))
CIRR_ANNOTATIONS = SHARED / "data" / "cirr"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Generated data and caches go to a per-session temporary folder, never ~/.cache."""
    monkeypatch.setenv("COIR_BENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def cirr_root(tmp_path_factory) -> Path:
    """The real CIRR annotations with small stand-in images (NLVR2 is not redistributable)."""
    if not (CIRR_ANNOTATIONS / "captions").is_dir():
        pytest.skip(f"CIRR annotations not found at {CIRR_ANNOTATIONS} (set COIR_SHARED)")
    root = tmp_path_factory.mktemp("cirr")
    for sub in ("captions", "image_splits"):
        shutil.copytree(CIRR_ANNOTATIONS / sub, root / sub)
    write_standin_images(root, ["val", "test1"])
    return root


def write_standin_images(root: Path, splits: list[str], size: int = 16) -> None:
    """One small PNG per id of each split file, its colour derived from the id."""
    for split in splits:
        entries = json.loads((root / "image_splits" / f"split.rc2.{split}.json").read_text())
        for image_id, rel in entries.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(abs(hash(image_id)) % (2**32))
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path, compress_level=1)


def pytest_addoption(parser):
    parser.addoption("--skip-slow", action="store_true", help="skip tests marked slow (quick local loop)")


def pytest_configure(config):
    if config.getoption("--skip-slow"):
        config.option.markexpr = "not slow" if not config.option.markexpr else f"({config.option.markexpr}) and not slow"
