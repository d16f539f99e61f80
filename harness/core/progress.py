"""Progress bars on long steps, quiet when stderr is not a terminal (CI, logs)."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm import tqdm


def progress(iterable: Iterable, disable: bool = False, **kwargs) -> Iterable:
    return tqdm(iterable, disable=disable or not sys.stderr.isatty(), dynamic_ncols=True, **kwargs)


def say(message: str) -> None:
    """A one-line status message on stderr, so stdout holds only the results."""
    print(message, file=sys.stderr, flush=True)
