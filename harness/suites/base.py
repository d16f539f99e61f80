"""The Suite contract: a named dataset that gives the queries and the gallery of a
split, built from its split files (never from a folder glob), and loads images
by id.

    suite = SUITES.get("cirr")(data_root)      # register once with @register_suite
    data = suite.load("val")                   # -> SplitData
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from harness.core.registry import Registry
from harness.suites.image_files import READ_ERRORS, open_rgb, unreadable


@dataclass(frozen=True)
class Query:
    pair_id: int
    reference: str
    caption: str
    target: str | None  # None where the split has no targets (CIRR test1)
    target_soft: dict[str, float] = field(default_factory=dict)
    members: tuple[str, ...] = ()  # the img_set, reference included
    # Every correct target, `target` first, where a query has several (CIRCO's
    # gt_img_ids); empty where `target` is the only one.
    ground_truths: tuple[str, ...] = ()
    group: str = ""  # the sub-gallery it is ranked in (FashionIQ's category); "" = the whole gallery
    # The gallery item the reference comes from when it is not a gallery id itself
    # (WebVid-CoVR: the reference video of a query frame), removed from the ranking.
    reference_item: str = ""


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
    # Sub-galleries by name (FashionIQ: category -> its split file's ids, each a part
    # of `gallery`); a query whose `group` names one is ranked within it only.
    groups: dict[str, list[str]] = field(default_factory=dict)
    # Gallery (or target) items that are videos: their frames' image ids and pooling
    # weights (summing to 1); an item not listed is an image, embedded as itself.
    frames: dict[str, tuple[tuple[str, float], ...]] = field(default_factory=dict)
    # Per-query candidate galleries by setting (EgoCVR: "global", "local"): for each
    # query, in query order, the positions in `gallery` (the one pool) of its own
    # candidates, an int array, or None for the whole pool; a setting's metrics rank
    # each query within its own (harness/evaluation/candidate_galleries.py).
    candidates: dict[str, list[np.ndarray | None]] = field(default_factory=dict)

    def take(self, rows: Sequence[int], **changes) -> SplitData:
        """The split with the queries at `rows` (in that order) and their candidate
        galleries, the gallery whole; `changes` as for dataclasses.replace."""
        rows = list(rows)
        return replace(self, queries=[self.queries[i] for i in rows],
                       candidates={s: [c[i] for i in rows] for s, c in self.candidates.items()}, **changes)

    def images_of(self, item_id: str) -> list[str]:
        """The images an item is embedded from: its frames, or itself."""
        return frames_of(self.frames, item_id)[0]

    def image_path(self, image_id: str) -> Path:
        return self.image_paths[image_id]

    def load_image(self, image_id: str) -> Image.Image:
        """The image as RGB, whatever its mode (harness/suites/image_files.py)."""
        path = self.image_paths[image_id]
        try:
            return open_rgb(path)
        except READ_ERRORS as err:
            raise unreadable(image_id, path, err, self.layout_help) from err


class Suite(Protocol):
    """`scoring` names the protocol that scores the suite's splits and writes its
    server files (harness/protocols: "cirr", "fashioniq", "circo"). A suite with no
    train split of its own (CIRCO) may define `load_training(split)`, the data a
    run fine-tunes on instead (harness.pipeline uses it when present)."""

    name: str
    splits: tuple[str, ...]
    scoring: str

    def load(self, split: str) -> SplitData: ...


SUITES: Registry[type] = Registry("suite")
register_suite = SUITES.register


def frames_of(frames: dict[str, tuple[tuple[str, float], ...]], item_id: str) -> tuple[list[str], list[float]]:
    """The images an item is embedded from and their pooling weights: a video's
    frames (`SplitData.frames`), or the item itself with weight 1."""
    if item_id not in frames:
        return [item_id], [1.0]
    return [frame for frame, _ in frames[item_id]], [weight for _, weight in frames[item_id]]


def pool_frames(embeddings: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """A video's embedding from its frames' (F, ...): the weighted sum, L2-normalised
    again (per token for multi-vector features), as CoVR pools a target video."""
    w = torch.tensor(weights, dtype=embeddings.dtype, device=embeddings.device)
    return torch.nn.functional.normalize((embeddings * w.view(-1, *[1] * (embeddings.ndim - 1))).sum(0), dim=-1)
