"""The real CIRR annotations beside small stand-in images, for tests and timings.

NLVR2's images are not redistributable; the annotations are (MIT), and a copy of the
val and test1 ones lives in tests/data/cirr/. A stand-in root is the CIRR layout with
those annotations and one small PNG per id of each split file, its pixels seeded
by the id (crc32, the same in every process and on every machine), so protocol
code runs on the real queries, galleries and image sets.
"""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from harness.core.provenance import REPO

VENDORED_ANNOTATIONS = REPO / "tests" / "data" / "cirr"


def write_standin_images(root: Path, splits: list[str], size: int = 16) -> None:
    """One size x size PNG per id of root/image_splits/split.rc2.<split>.json, at the
    path the split file gives."""
    for split in splits:
        entries = json.loads((root / "image_splits" / f"split.rc2.{split}.json").read_text())
        for image_id, rel in entries.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(zlib.crc32(image_id.encode()))
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path, compress_level=1)


def standin_root(annotations: Path, root: Path, splits: list[str], size: int = 16) -> Path:
    """root in the CIRR layout: annotations' captions/ and image_splits/ copied, and
    stand-in images for `splits`."""
    for sub in ("captions", "image_splits"):
        shutil.copytree(annotations / sub, root / sub, dirs_exist_ok=True)
    write_standin_images(root, splits, size)
    return root
