"""Seeded generator of "shapes": a small synthetic CoIR dataset in the CIRR layout.

Images are PIL-drawn scenes of coloured shapes on a 3x3 grid; captions are
templated edits of a reference scene with exactly one correct target. The files
are written exactly as CIRR lays them out (captions/, image_splits/, train/<n>/,
dev/, test1/), so the CIRR loader reads both.

Each image set is a base scene R and five edits of it, T1..T5, at least two of
which are the same edit kind on the same object with a different value (hard
negatives one attribute apart). All six are in the gallery, so neither "nearest
to the reference" nor "caption alone" can pick the target.

    manifest = generate(Path("data/shapes"), ShapesSpec(seed=0))
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from harness.suites.generated import write_dataset, write_json
from harness.suites.scenes import (
    EDITS_PER_SET,
    Scene,
    apply_edit,
    base_scene,
    caption_for,
    plan_edits,
    render_scene,
)

GENERATOR_VERSION = 1

SPLITS = ("train", "val", "test1")  # also the order pairids are numbered in

@dataclass(frozen=True)
class ShapesSpec:
    seed: int = 0
    image_size: int = 64
    sets: dict = field(default_factory=lambda: {"train": 4000, "val": 300, "test1": 300})
    queries_per_set: dict = field(default_factory=lambda: {"train": 5, "val": 2, "test1": 2})
    version: str = "rc2"


def _validate(spec: ShapesSpec) -> None:
    unknown = set(spec.sets) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; expected a subset of {SPLITS}")
    for split, count in spec.sets.items():
        if count < 0:
            raise ValueError(f"sets[{split!r}] must be >= 0, got {count}")
        queries = spec.queries_per_set.get(split)
        if queries is None or not 1 <= queries <= EDITS_PER_SET:
            raise ValueError(f"queries_per_set[{split!r}] must be in 1..{EDITS_PER_SET}, got {queries}")
    if spec.image_size < 12:
        raise ValueError(f"image_size must be >= 12 px, got {spec.image_size}")


def _splits(spec: ShapesSpec) -> list[str]:
    return [split for split in SPLITS if split in spec.sets]


# ---------------------------------------------------------------- sampling


def _set_rng(seed: int, split: str, index: int) -> random.Random:
    """One RNG per set, so a smaller spec gives a prefix of a larger one."""
    digest = hashlib.sha256(f"shapes/{seed}/{split}/{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))



_ID_PREFIX = {"train": "train", "val": "dev", "test1": "test1"}


def _image_folder(split: str, set_index: int) -> str:
    # CIRR spreads train images over numbered sub-folders.
    return f"train/{set_index // 100}" if split == "train" else _ID_PREFIX[split]


def _first_pairid(spec: ShapesSpec, split: str) -> int:
    """Pairids are unique across splits: each split continues where the last stopped."""
    start = 0
    for earlier in _splits(spec):
        if earlier == split:
            return start
        start += spec.sets[earlier] * spec.queries_per_set[earlier]
    raise ValueError(f"split {split!r} is not in the spec")


class SplitPlan:
    """The images and queries of one split, built set by set.

    scenes maps each image id to its scene (no two ids share a scene), paths maps
    it to its "./relative/path.png", and queries are the caption records.
    """

    def __init__(self, spec: ShapesSpec, split: str):
        self.spec = spec
        self.split = split
        self.scenes: dict[str, Scene] = {}
        self.paths: dict[str, str] = {}
        self.queries: list[dict] = []
        self._ids: dict[Scene, str] = {}
        self._next_pairid = _first_pairid(spec, split)

    def add_set(self, index: int) -> list[str]:
        """Sample set `index`, record its queries; returns the ids of images new to the split."""
        rng = _set_rng(self.spec.seed, self.split, index)
        reference = base_scene(rng)
        edits = plan_edits(reference, rng)
        targets = [apply_edit(reference, e) for e in edits]

        new_ids: list[str] = []
        ids = [self._image_id(scene, index, k, new_ids) for k, scene in enumerate([reference] + targets)]
        members = rng.sample(ids, len(ids))  # shuffled, as CIRR's img_set.members

        # Lead with a sibling edit so every set queries at least one hard-negative pair.
        chosen = [0] + rng.sample(range(1, EDITS_PER_SET), self.spec.queries_per_set[self.split] - 1)
        for e in chosen:
            caption = caption_for(edits[e], reference, rng)
            self.queries.append(self._query(ids[0], ids[e + 1], caption, index, members))
        return new_ids

    def _image_id(self, scene: Scene, set_index: int, k: int, new_ids: list[str]) -> str:
        """The split's id for `scene`, reusing it when an earlier set drew the same scene."""
        if scene in self._ids:
            return self._ids[scene]
        image_id = f"{_ID_PREFIX[self.split]}-{set_index}-{k}"
        self._ids[scene] = image_id
        self.scenes[image_id] = scene
        self.paths[image_id] = f"./{_image_folder(self.split, set_index)}/{image_id}.png"
        new_ids.append(image_id)
        return image_id

    def _query(self, reference: str, target: str, caption: str, index: int, members: list[str]) -> dict:
        img_set = {"id": index, "members": members, "reference_rank": members.index(reference)}
        query = {"pairid": self._next_pairid, "reference": reference}
        self._next_pairid += 1
        if self.split == "test1":  # real CIRR test1 hides the targets
            return {**query, "caption": caption, "img_set": img_set}
        img_set["target_rank"] = members.index(target)
        return {**query, "target_hard": target, "target_soft": {target: 1.0},
                "caption": caption, "img_set": img_set}


def plan_split(spec: ShapesSpec, split: str) -> SplitPlan:
    """The full plan of a split without rendering anything (what generate writes)."""
    _validate(spec)
    plan = SplitPlan(spec, split)
    for index in range(spec.sets[split]):
        plan.add_set(index)
    return plan


# ---------------------------------------------------------------- rendering



def describe(spec: ShapesSpec) -> dict:
    """The manifest fields that identify a dataset: equal ones mean the same files."""
    _validate(spec)
    return {
        "generator": "shapes",
        "generator_version": GENERATOR_VERSION,
        "seed": spec.seed,
        "image_size": spec.image_size,
        "splits": {s: {"sets": spec.sets[s], "queries_per_set": spec.queries_per_set[s]}
                   for s in _splits(spec)},
        "version": spec.version,
    }


def matches(manifest: dict, spec: ShapesSpec) -> bool:
    """Whether an existing manifest was generated from `spec` (counts are ignored)."""
    identity = {**manifest, "splits": {
        split: {k: v for k, v in fields.items() if k in ("sets", "queries_per_set")}
        for split, fields in manifest.get("splits", {}).items()
    }}
    return identity == describe(spec)


def _write_split(out: Path, spec: ShapesSpec, split: str, progress: Callable) -> dict:
    plan = SplitPlan(spec, split)
    for index in progress(range(spec.sets[split])):
        for image_id in plan.add_set(index):
            path = out / plan.paths[image_id]
            path.parent.mkdir(parents=True, exist_ok=True)
            render_scene(plan.scenes[image_id], spec.image_size).save(path, format="PNG", compress_level=1)
    write_json(out / "captions" / f"cap.{spec.version}.{split}.json", plan.queries)
    write_json(out / "image_splits" / f"split.{spec.version}.{split}.json", plan.paths)
    return {"queries": len(plan.queries), "images": len(plan.paths)}




def generate(root: Path, spec: ShapesSpec,
             progress: Callable[[Iterable], Iterable] | None = None) -> dict:
    """Write the dataset to `root` atomically (harness/suites/generated.py) and return
    its manifest. `progress` (e.g. tqdm) wraps each split's loop over sets."""
    manifest = describe(spec)
    progress = progress or (lambda iterable: iterable)

    def write(tmp: Path) -> dict:
        for split in _splits(spec):
            manifest["splits"][split].update(_write_split(tmp, spec, split, progress))
        return {"splits": manifest["splits"]}

    return write_dataset(root, manifest, write)
