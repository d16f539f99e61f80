"""Where a generated suite's default dataset lives, generating it on first use, and
the writers every generator shares (JSON files, the finished dataset swapped in).

    root = default_root("fashioniq", describe(spec))   # $COIR_BENCH_CACHE/fashioniq/<hash>
    manifest = ensure_generated(root, "fashioniq", lambda: generate(root, spec))
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from harness.core.errors import HarnessError
from harness.core.paths import cache_dir


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


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_dataset(root: Path, manifest: dict, write: Callable[[Path], dict]) -> dict:
    """Generate into a sibling tmp dir (`write(tmp)` returns what to add to the
    manifest), write manifest.json and swap the finished dataset in; nothing half
    written is left at root."""
    root = Path(root)
    tmp = root.parent / f"{root.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        manifest = {**manifest, **write(tmp)}
        write_json(tmp / "manifest.json", manifest)
        replace_dir(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def replace_dir(finished: Path, root: Path) -> None:
    """Move `finished` to `root`; an existing root is swapped out, never written into."""
    if not root.exists():
        finished.rename(root)
        return
    old = root.parent / f"{root.name}.old-{os.getpid()}"
    root.rename(old)
    try:
        finished.rename(root)
    except BaseException:
        old.rename(root)
        raise
    if old.is_dir():
        shutil.rmtree(old)
    else:
        old.unlink()

