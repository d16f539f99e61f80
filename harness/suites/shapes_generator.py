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
import json
import os
import random
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageDraw

GENERATOR_VERSION = 1

SPLITS = ("train", "val", "test1")  # also the order pairids are numbered in
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # reading order: index = 3 * row + column
SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 0),
    "purple": (140, 40, 180),
    "orange": (255, 130, 0),
}
SIZES = ("small", "large")
BACKGROUND = (255, 255, 255)
SIZE_FRACTION = {"small": 0.4, "large": 0.8}  # of the cell side

MAX_OBJECTS = 4  # after an "add"; base scenes have 1 to 3
BASE_OBJECT_WEIGHTS = {1: 1, 2: 2, 3: 2}  # few 1-object scenes: only 324 exist
EDITS_PER_SET = 5

# Phrase for "where an object is", e.g. "the circle at the top left".
_AT_POSITION = {p: ("in" if p == "center" else "on" if p in ("left", "right") else "at") for p in POSITIONS}

_TEMPLATE_WORDS = (
    "a the at on in to of with into same colour "
    "make change turn replace add put remove take away move shift big bigger smaller"
).split()
VOCABULARY: tuple[str, ...] = tuple(sorted(
    set(_TEMPLATE_WORDS) | set(SHAPES) | set(COLOURS) | set(SIZES)
    | {word for position in POSITIONS for word in position.split()}
))


class Obj(NamedTuple):
    position: str
    shape: str
    colour: str
    size: str


Scene = tuple[Obj, ...]  # canonical: sorted, at most one object per position


def scene_key(objects: Iterable[Obj]) -> Scene:
    """The canonical form of a scene: equal keys are the same image."""
    return tuple(sorted(objects))


class Edit(NamedTuple):
    kind: str  # colour | size | shape | move | add | remove
    obj: Obj  # the object edited; for "add", the object added
    value: str | None  # the new colour / size / shape / position; None for add, remove


_EDITED_FIELD = {"colour": "colour", "size": "size", "shape": "shape", "move": "position"}


def apply_edit(scene: Scene, edit: Edit) -> Scene:
    if edit.kind == "add":
        return scene_key(scene + (edit.obj,))
    rest = tuple(o for o in scene if o != edit.obj)
    if edit.kind == "remove":
        return scene_key(rest)
    return scene_key(rest + (edit.obj._replace(**{_EDITED_FIELD[edit.kind]: edit.value}),))


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


def _random_object(rng: random.Random, positions: list[str]) -> Obj:
    return Obj(rng.choice(positions), rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(SIZES))


def _empty_positions(scene: Scene) -> list[str]:
    taken = {o.position for o in scene}
    return [p for p in POSITIONS if p not in taken]


def _base_scene(rng: random.Random) -> Scene:
    counts = list(BASE_OBJECT_WEIGHTS)
    count = rng.choices(counts, weights=[BASE_OBJECT_WEIGHTS[c] for c in counts])[0]
    objects: list[Obj] = []
    for _ in range(count):
        objects.append(_random_object(rng, _empty_positions(tuple(objects))))
    return scene_key(objects)


def _alternatives(scene: Scene, obj: Obj, kind: str) -> list[str]:
    """The values an edit of this kind can give this object (all differ from now)."""
    if kind == "move":
        return _empty_positions(scene)
    choices = {"colour": list(COLOURS), "size": list(SIZES), "shape": list(SHAPES)}[kind]
    return [v for v in choices if v != getattr(obj, kind)]


def _random_edit(scene: Scene, rng: random.Random) -> Edit:
    kinds = ["colour", "size", "shape", "move"]
    if len(scene) < MAX_OBJECTS:
        kinds.append("add")
    if len(scene) >= 2:
        kinds.append("remove")
    kind = rng.choice(kinds)
    if kind == "add":
        return Edit("add", _random_object(rng, _empty_positions(scene)), None)
    obj = rng.choice(scene)
    if kind == "remove":
        return Edit("remove", obj, None)
    return Edit(kind, obj, rng.choice(_alternatives(scene, obj, kind)))


def _sibling_edits(scene: Scene, rng: random.Random) -> list[Edit]:
    """2 or 3 edits of one kind on one object that differ only in the new value:
    each one's target is a hard negative for the others."""
    kinds = ["colour", "shape", "move"] + (["add"] if len(scene) < MAX_OBJECTS else [])
    kind = rng.choice(kinds)  # size and remove have no second value
    count = rng.choice((2, 3))
    if kind == "add":
        new = _random_object(rng, _empty_positions(scene))
        return [Edit("add", new._replace(colour=c), None) for c in rng.sample(list(COLOURS), count)]
    obj = rng.choice(scene)
    values = _alternatives(scene, obj, kind)
    return [Edit(kind, obj, v) for v in rng.sample(values, min(count, len(values)))]


def _plan_edits(scene: Scene, rng: random.Random) -> list[Edit]:
    """Five edits with distinct targets, none equal to the scene; siblings first."""
    edits = _sibling_edits(scene, rng)
    seen = {scene} | {apply_edit(scene, e) for e in edits}
    # Terminates quickly: every scene has dozens of edits with distinct targets.
    while len(edits) < EDITS_PER_SET:
        edit = _random_edit(scene, rng)
        target = apply_edit(scene, edit)
        if target not in seen:
            edits.append(edit)
            seen.add(target)
    return edits


# ---------------------------------------------------------------- captions


def _size_word(size: str, rng: random.Random) -> str:
    return "small" if size == "small" else rng.choice(("large", "big"))


def _where(position: str) -> str:
    return f"{_AT_POSITION[position]} the {position}"


# Attribute sets to refer to an object by, shortest first; the last is always unique.
_REFERENCES = (
    ("shape",),
    ("colour", "shape"),
    ("size", "shape"),
    ("size", "colour", "shape"),
    ("colour", "shape", "position"),
)


def refer_to(obj: Obj, scene: Scene, rng: random.Random) -> str:
    """The shortest description that matches only `obj` in `scene`."""
    for attributes in _REFERENCES:
        matches = [o for o in scene if all(getattr(o, a) == getattr(obj, a) for a in attributes)]
        if len(matches) == 1:
            break
    words = ["the"]
    if "size" in attributes:
        words.append(_size_word(obj.size, rng))
    if "colour" in attributes:
        words.append(obj.colour)
    words.append(obj.shape)
    if "position" in attributes:
        words.append(_where(obj.position))
    return " ".join(words)


def caption_for(edit: Edit, scene: Scene, rng: random.Random) -> str:
    """A caption that, given `scene`, determines apply_edit(scene, edit); 2 phrasings per kind."""
    variant = rng.randrange(2)
    if edit.kind == "add":
        new = edit.obj
        verb = ("add", "put")[variant]
        return f"{verb} a {_size_word(new.size, rng)} {new.colour} {new.shape} {_where(new.position)}"
    it = refer_to(edit.obj, scene, rng)
    if edit.kind == "colour":
        return (f"make {it} {edit.value}", f"change the colour of {it} to {edit.value}")[variant]
    if edit.kind == "size":
        comparative = "bigger" if edit.value == "large" else "smaller"
        return (f"make {it} {_size_word(edit.value, rng)}", f"make {it} {comparative}")[variant]
    if edit.kind == "shape":
        return (f"turn {it} into a {edit.value}",
                f"replace {it} with a {edit.value} of the same colour")[variant]
    if edit.kind == "remove":
        return (f"remove {it}", f"take away {it}")[variant]
    if edit.kind == "move":
        return f"{('move', 'shift')[variant]} {it} to the {edit.value}"
    raise ValueError(f"unknown edit kind {edit.kind!r}")


# ---------------------------------------------------------------- splits


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
        reference = _base_scene(rng)
        edits = _plan_edits(reference, rng)
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


def _object_box(obj: Obj, image_size: int) -> tuple[int, int, int, int]:
    row, column = divmod(POSITIONS.index(obj.position), 3)
    cell = image_size / 3
    half = SIZE_FRACTION[obj.size] * cell / 2
    cx, cy = (column + 0.5) * cell, (row + 0.5) * cell
    return round(cx - half), round(cy - half), round(cx + half) - 1, round(cy + half) - 1


def render_scene(scene: Scene, image_size: int) -> Image.Image:
    """Draws the scene; PIL's aliased primitives make the pixels deterministic."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene:
        x0, y0, x1, y1 = box = _object_box(obj, image_size)
        colour = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse(box, fill=colour)
        elif obj.shape == "square":
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)
    return image


# ---------------------------------------------------------------- writing


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


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _write_split(out: Path, spec: ShapesSpec, split: str, progress: Callable) -> dict:
    plan = SplitPlan(spec, split)
    for index in progress(range(spec.sets[split])):
        for image_id in plan.add_set(index):
            path = out / plan.paths[image_id]
            path.parent.mkdir(parents=True, exist_ok=True)
            render_scene(plan.scenes[image_id], spec.image_size).save(path, format="PNG", compress_level=1)
    _write_json(out / "captions" / f"cap.{spec.version}.{split}.json", plan.queries)
    _write_json(out / "image_splits" / f"split.{spec.version}.{split}.json", plan.paths)
    return {"queries": len(plan.queries), "images": len(plan.paths)}


def _replace_dir(finished: Path, root: Path) -> None:
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


def generate(root: Path, spec: ShapesSpec,
             progress: Callable[[Iterable], Iterable] | None = None) -> dict:
    """Write the dataset to `root` atomically and return its manifest.

    Everything goes to a sibling tmp dir first, renamed into place when complete.
    `progress` (e.g. tqdm) wraps each split's loop over sets.
    """
    root = Path(root)
    manifest = describe(spec)
    progress = progress or (lambda iterable: iterable)
    tmp = root.parent / f"{root.name}.tmp-{os.getpid()}"
    if tmp.exists():  # left by an earlier crashed run of this very process id
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        for split in _splits(spec):
            manifest["splits"][split].update(_write_split(tmp, spec, split, progress))
        _write_json(tmp / "manifest.json", manifest)
        _replace_dir(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
