"""Atomic file writes: write a temporary sibling, then rename over the target, so
a reader never sees a half-written file and an interrupted run loses nothing."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def replace_atomically(path: str | Path, write) -> Path:
    """`write(tmp)` writes a temporary sibling of path (any library's save function),
    which is then flushed to disk, given the usual mode and renamed over path:
    readers and concurrent writers only ever see a complete file, the last rename
    winning."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return replace_atomically(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | Path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2) + "\n")


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
