"""Where a generated suite's default dataset lives, and generating it on first use.

    root = default_root("fashioniq", describe(spec))   # $COIR_BENCH_CACHE/fashioniq/<hash>
    manifest = ensure_generated(root, "fashioniq", lambda: generate(root, spec))
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from harness.errors import HarnessError
from harness.paths import cache_dir


def default_root(name: str, identity: dict) -> Path:
    key = json.dumps(identity, sort_keys=True)
    return cache_dir() / name / hashlib.sha256(key.encode()).hexdigest()[:12]


def ensure_generated(root: Path, name: str, generate: Callable[[], dict]) -> dict:
    """The manifest of the dataset at root, generating it first if root is absent or empty."""
    manifest = root / "manifest.json"
    if manifest.is_file():
        return json.loads(manifest.read_text())
    if root.exists() and any(root.iterdir()):
        raise HarnessError(
            f"{root} is not empty and holds no {name} manifest.json: refusing to write into it."
        )
    return generate()
