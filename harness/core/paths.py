"""Where the harness keeps what it makes for the user (generated data, caches)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$COIR_BENCH_CACHE, else ~/.cache/coir-bench."""
    return Path(os.environ.get("COIR_BENCH_CACHE", Path.home() / ".cache" / "coir-bench"))
