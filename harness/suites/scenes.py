"""The scenes every generated suite draws (shapes, and the FashionIQ and CIRCO
stand-ins): coloured shapes on a 3x3 grid, the edits that turn one scene into
another, their captions, and the drawing.

    scene = base_scene(rng)                  # 1 to 3 objects
    edits = plan_edits(scene, rng)           # EDITS_PER_SET edits with distinct results
    caption = caption_for(edits[0], scene, rng)
    image = render_scene(apply_edit(scene, edits[0]), 64)
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import NamedTuple

from PIL import Image, ImageDraw

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



def _random_object(rng: random.Random, positions: list[str]) -> Obj:
    return Obj(rng.choice(positions), rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(SIZES))


def _empty_positions(scene: Scene) -> list[str]:
    taken = {o.position for o in scene}
    return [p for p in POSITIONS if p not in taken]


def base_scene(rng: random.Random) -> Scene:
    counts = list(BASE_OBJECT_WEIGHTS)
    count = rng.choices(counts, weights=[BASE_OBJECT_WEIGHTS[c] for c in counts])[0]
    objects: list[Obj] = []
    for _ in range(count):
        objects.append(_random_object(rng, _empty_positions(tuple(objects))))
    return scene_key(objects)


def alternatives(scene: Scene, obj: Obj, kind: str) -> list[str]:
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
    return Edit(kind, obj, rng.choice(alternatives(scene, obj, kind)))


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
    values = alternatives(scene, obj, kind)
    return [Edit(kind, obj, v) for v in rng.sample(values, min(count, len(values)))]


def plan_edits(scene: Scene, rng: random.Random) -> list[Edit]:
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



# ---------------------------------------------------------------- descriptions


def describe_scene(scene: Scene, rng: random.Random) -> str:
    """A caption of the whole scene, objects in reading order ("a large red circle at
    the top left with a small blue square in the center"): what an image-caption pair
    says, for the contrastive pre-training of a dual encoder."""
    phrases = [f"a {_size_word(o.size, rng)} {o.colour} {o.shape} {_where(o.position)}"
               for o in sorted(scene, key=lambda o: POSITIONS.index(o.position))]
    return " with ".join(phrases)
