"""CIRR (Liu et al., ICCV 2021): the real annotations and NLVR2 images, read from
--data-root in the official layout. test1 has no targets: it is scored by the
evaluation server from the two files the harness writes."""

from __future__ import annotations

from pathlib import Path

from harness.core.errors import HarnessError
from harness.suites.base import SplitData, register_suite
from harness.suites.cirr_layout import layout_help, read_split

VERSION = "rc2"

WHERE_TO_GET = """CIRR needs --data-root pointing at a folder in the official layout:
  annotations (captions/, image_splits/): https://github.com/Cuberick-Orion/CIRR (branch cirr_dataset)
  images (NLVR2 train/, dev/, test1/): https://github.com/lil-lab/nlvr/tree/master/nlvr2
"""


@register_suite("cirr")
class CirrSuite:
    name = "cirr"
    splits = ("train", "val", "test1")
    default_split = "val"
    scoring = "cirr"  # harness/evaluation/protocols/cirr.py

    def __init__(self, data_root: Path | None = None):
        if data_root is None:
            raise HarnessError(WHERE_TO_GET + layout_help(Path("<data-root>"), VERSION))
        if not Path(data_root).is_dir():
            raise HarnessError(
                f"--data-root {data_root} does not exist.\n"
                + WHERE_TO_GET
                + layout_help(Path(data_root), VERSION)
            )
        self.root = Path(data_root)

    def load(self, split: str) -> SplitData:
        if split not in self.splits:
            raise HarnessError(f"cirr has splits {', '.join(self.splits)}, not {split!r}")
        return read_split(self.root, VERSION, split, self.name)
