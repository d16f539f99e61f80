"""Seeded generator of a small dataset in the FashionIQ layout, so the `fashioniq`
suite, its tests and offline demos run without the real images.

The pictures are `shapes` scenes (harness/suites/scenes.py), drawn and
described with its vocabulary so blip-tiny learns them. Each annotation mirrors
FashionIQ's: a reference ("candidate") and a target that differ in two ways, and
two relative captions, each describing one of the two changes, as two annotators
each describing part of the difference would. Only "c1 and c2" pins the target:
the images that make just one change, and one that makes the first change with
another value, are in the same category's gallery as hard negatives.

    root/captions/cap.<category>.<split>.json       [{"target", "candidate", "captions": [c1, c2]}]
    root/image_splits/split.<category>.<split>.json [image id, ...]
    root/images/<id>.png
    root/manifest.json

test annotations carry no target, as in the release the benchmark reports val on.

    manifest = generate(Path("data/fashioniq"), FashionIQSpec(seed=0))
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

from harness.suites.generated import write_dataset, write_json
from harness.suites.scenes import (
    Edit,
    Scene,
    alternatives,
    apply_edit,
    base_scene,
    caption_for,
    render_scene,
)

GENERATOR_VERSION = 1
CATEGORIES = ("dress", "shirt", "toptee")
SPLITS = ("train", "val", "test")
EDIT_KINDS = ("colour", "size", "shape")  # changes of one object that keep its place
_CODE = {"dress": "D", "shirt": "S", "toptee": "T", "train": "R", "val": "V", "test": "E"}


@dataclass(frozen=True)
class FashionIQSpec:
    seed: int = 0
    image_size: int = 64
    # annotations per category and split
    queries: dict = field(default_factory=lambda: {"train": 2000, "val": 150, "test": 50})


def describe(spec: FashionIQSpec) -> dict:
    """The manifest fields that identify a dataset: equal ones mean the same files."""
    unknown = set(spec.queries) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; expected a subset of {SPLITS}")
    if any(n < 1 for n in spec.queries.values()):
        raise ValueError(f"every split needs at least one annotation, got {spec.queries}")
    return {
        "generator": "fashioniq",
        "generator_version": GENERATOR_VERSION,
        "seed": spec.seed,
        "image_size": spec.image_size,
        "queries_per_category": {s: spec.queries[s] for s in SPLITS if s in spec.queries},
    }


def _rng(seed: int, category: str, split: str, index: int) -> random.Random:
    """One RNG per annotation, so a smaller spec gives a prefix of a larger one."""
    digest = hashlib.sha256(f"fashioniq/{seed}/{category}/{split}/{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _two_object_scene(rng: random.Random) -> Scene:
    while True:
        scene = base_scene(rng)
        if len(scene) >= 2:
            return scene


def plan_annotation(rng: random.Random) -> tuple[Scene, Scene, list[Scene], tuple[str, str]]:
    """(reference, target, hard negatives, the two captions) of one annotation."""
    reference = _two_object_scene(rng)
    first_obj, second_obj = rng.sample(list(reference), 2)
    edits = []
    for obj in (first_obj, second_obj):
        kind = rng.choice(EDIT_KINDS)
        edits.append(Edit(kind, obj, rng.choice(alternatives(reference, obj, kind))))
    first, second = edits
    target = apply_edit(apply_edit(reference, first), second)
    negatives = [apply_edit(reference, first), apply_edit(reference, second)]
    others = [v for v in alternatives(reference, first.obj, first.kind) if v != first.value]
    if others:  # the first change with another value, the second as asked
        negatives.append(apply_edit(apply_edit(reference, first._replace(value=rng.choice(others))), second))
    captions = (caption_for(first, reference, rng), caption_for(second, reference, rng))
    if rng.random() < 0.5:  # annotators are not ordered
        captions = captions[::-1]
    return reference, target, negatives, captions


class _SplitWriter:
    """The images and annotations of one category's split, one id per distinct scene."""

    def __init__(self, out: Path, spec: FashionIQSpec, category: str, split: str):
        self.out, self.spec, self.category, self.split = out, spec, category, split
        self.ids: dict[Scene, str] = {}
        self.annotations: list[dict] = []

    def image_id(self, scene: Scene) -> str:
        if scene not in self.ids:
            image_id = f"GEN{_CODE[self.category]}{_CODE[self.split]}{len(self.ids):06d}"
            self.ids[scene] = image_id
            render_scene(scene, self.spec.image_size).save(
                self.out / "images" / f"{image_id}.png", format="PNG", compress_level=1
            )
        return self.ids[scene]

    def add(self, index: int) -> None:
        reference, target, negatives, captions = plan_annotation(
            _rng(self.spec.seed, self.category, self.split, index)
        )
        entry = {"candidate": self.image_id(reference), "captions": list(captions)}
        target_id = self.image_id(target)
        for scene in negatives:
            self.image_id(scene)
        if self.split != "test":  # the release hides test targets
            entry = {"target": target_id, **entry}
        self.annotations.append(entry)


def generate(root: Path, spec: FashionIQSpec) -> dict:
    """Write the dataset to `root` atomically and return its manifest."""
    return write_dataset(root, describe(spec), lambda tmp: _write(tmp, spec))


def _write(tmp: Path, spec: FashionIQSpec) -> dict:
    (tmp / "images").mkdir(parents=True)
    counts = {}
    for split in [s for s in SPLITS if s in spec.queries]:
        for category in CATEGORIES:
            writer = _SplitWriter(tmp, spec, category, split)
            for index in range(spec.queries[split]):
                writer.add(index)
            write_json(tmp / "captions" / f"cap.{category}.{split}.json", writer.annotations)
            write_json(tmp / "image_splits" / f"split.{category}.{split}.json", list(writer.ids.values()))
            counts[f"{category}.{split}"] = {"annotations": len(writer.annotations), "images": len(writer.ids)}
    return {"counts": counts}
