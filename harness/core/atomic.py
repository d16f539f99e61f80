"""Atomic file writes: write a temporary sibling, then rename over the target, so
a reader never sees a half-written file and an interrupted run loses nothing.

`all_or_nothing()` groups writes: inside it every file is written beside its target
and renamed into place only when the block completes; on an error none appears, no
earlier file is replaced, and folders the block created are removed again (a failed
command writes nothing)."""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import tempfile
from pathlib import Path

# (temporary file, target) of the writes an `all_or_nothing` block holds back, and the
# folders it created; None outside such a block.
_STAGED: contextvars.ContextVar[tuple[list, list] | None] = contextvars.ContextVar("staged", default=None)


@contextlib.contextmanager
def all_or_nothing():
    """Every write through this module inside the block lands when it completes, or none does."""
    staged: tuple[list, list] = ([], [])
    token = _STAGED.set(staged)
    try:
        yield
    except BaseException:
        for tmp, _ in staged[0]:
            Path(tmp).unlink(missing_ok=True)
        for folder in reversed(staged[1]):  # deepest first; only if still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    finally:
        _STAGED.reset(token)
    for tmp, path in staged[0]:
        os.replace(tmp, path)


def _make_folder(folder: Path) -> None:
    staged = _STAGED.get()
    if staged is not None:
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        staged[1].extend(reversed(missing))  # outermost first
    folder.mkdir(parents=True, exist_ok=True)


def replace_atomically(path: str | Path, write) -> Path:
    """`write(tmp)` writes a temporary sibling of path (any library's save function),
    which is then flushed to disk, given the usual mode and renamed over path:
    readers and concurrent writers only ever see a complete file, the last rename
    winning."""
    path = Path(path)
    _make_folder(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
        staged = _STAGED.get()
        if staged is None:
            os.replace(tmp, path)
        else:
            staged[0].append((tmp, path))
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
