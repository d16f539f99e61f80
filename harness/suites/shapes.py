"""`shapes`: a generated CoIR dataset in the CIRR layout (coloured-shape scenes and
templated edits), so the whole pipeline runs offline in minutes.

Without --data-root the default dataset is generated once into the cache
($COIR_BENCH_CACHE/shapes/...). A --data-root that holds a generated dataset is
read as it is; an empty or absent one is filled with the default dataset.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from harness.core.errors import HarnessError
from harness.core.paths import cache_dir
from harness.core.progress import progress
from harness.suites import shapes_generator
from harness.suites.base import SplitData, register_suite
from harness.suites.cirr_layout import read_split

DEFAULT_SPEC = shapes_generator.ShapesSpec()


def default_root(spec: shapes_generator.ShapesSpec = DEFAULT_SPEC) -> Path:
    key = json.dumps(shapes_generator.describe(spec), sort_keys=True)
    return cache_dir() / "shapes" / hashlib.sha256(key.encode()).hexdigest()[:12]


def ensure_dataset(root: Path, spec: shapes_generator.ShapesSpec = DEFAULT_SPEC) -> dict:
    """The manifest of the dataset at root, generating it first if root is empty."""
    manifest = root / "manifest.json"
    if manifest.is_file():
        return json.loads(manifest.read_text())
    if root.exists() and any(root.iterdir()):
        raise HarnessError(
            f"{root} is not empty and holds no shapes manifest.json: refusing to write "
            "into it. Point --data-root at an empty folder or a generated shapes dataset."
        )
    return shapes_generator.generate(
        root, spec, progress=lambda sets: progress(sets, desc="generating shapes", unit="set")
    )


@register_suite("shapes")
class ShapesSuite:
    name = "shapes"
    splits = ("train", "val", "test1")
    default_split = "val"
    scoring = "cirr"  # harness/evaluation/protocols/cirr.py

    def __init__(self, data_root: Path | None = None):
        self.root = Path(data_root) if data_root is not None else default_root()
        self.manifest = ensure_dataset(self.root)

    def load(self, split: str) -> SplitData:
        if split not in self.splits:
            raise HarnessError(f"shapes has splits {', '.join(self.splits)}, not {split!r}")
        data = read_split(self.root, self.manifest.get("version", "rc2"), split, self.name)
        data.provenance["manifest"] = self.manifest
        return data
