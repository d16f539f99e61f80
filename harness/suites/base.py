"""The Suite contract: a named dataset that gives the queries and the gallery of a
split, built from its split files (never from a folder glob), and loads images
by id.

    suite = SUITES.get("cirr")(data_root)      # register once with @register_suite
    data = suite.load("val")                   # -> SplitData
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from PIL import Image

from harness.errors import HarnessError
from harness.registry import Registry


@dataclass(frozen=True)
class Query:
    pair_id: int
    reference: str
    caption: str
    target: str | None  # None where the split has no targets (CIRR test1)
    target_soft: dict[str, float] = field(default_factory=dict)
    members: tuple[str, ...] = ()  # the img_set, reference included


@dataclass
class SplitData:
    suite: str
    split: str
    queries: list[Query]
    gallery: list[str]  # ordered ids of the split file
    image_paths: dict[str, Path]
    has_targets: bool
    layout_help: str  # where images are expected, for error messages
    provenance: dict = field(default_factory=dict)  # annotation files and hashes

    def image_path(self, image_id: str) -> Path:
        return self.image_paths[image_id]

    def load_image(self, image_id: str) -> Image.Image:
        path = self.image_paths[image_id]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, SyntaxError) as err:  # PIL raises SyntaxError on some corrupt files
            raise HarnessError(
                f"image {image_id!r} at {path} could not be read ({err}).\n{self.layout_help}"
            ) from err


class Suite(Protocol):
    name: str
    splits: tuple[str, ...]

    def load(self, split: str) -> SplitData: ...


SUITES: Registry[type] = Registry("suite")
register_suite = SUITES.register
