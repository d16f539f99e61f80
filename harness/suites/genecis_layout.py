"""GeneCIS's files (Vaze et al., CVPR 2023; facebookresearch/genecis at 0c5c968, CC-BY-NC
4.0, so no copy of its JSON is kept here): the four tasks' templates, read and checked
record by record, and the crop its attribute tasks take of a bounding box.

Each task is one JSON file, `genecis/<task>.json` (README "GeneCIS annotation format";
eval/evaluate.py line 114 opens `{genecis_root}/{dataset}.json`), holding a list of
templates, each a dict with `reference`, `target` (one image each), `gallery` (a list
of images: 14 per template in the real object files) and `condition` (the text).
An image is, for the object tasks (`focus_object`, `change_object`), `{"val_image_id":
int}`, a COCO 2017 val image read from `val2017/<12-digit id>.jpg`
(datasets/coco_dataset.py lines 23-24); for the attribute tasks (`focus_attribute`,
`change_attribute`), `{"image_id": ..., "instance_bbox": [x, y, w, h], ...}`, a Visual
Genome 1.2 image `VG_100K_all/<image_id>.jpg` (datasets/vaw_dataset.py lines 41-45,
config.py `visual_genome_images`) cropped around the box. The attribute files are not
in the stored snapshot of the repository; their format is read from the code that
loads them (vaw_dataset.py) and VAW's, whose `image_id` is a string of digits: both an
int and such a string are taken.

The crop (vaw_dataset.py lines 13-14 and 39-68, DILATION 0.7, PAD_CROP True):
left = max(0, x - 0.7 w), top = max(0, y - 0.7 h), right = min(W, left + 1.7 w),
bottom = min(H, top + 1.7 h), then padded with black to a square, the crop centred
(expand2square, lines 16-27). As written, the right and bottom edges are
left + 1.7 w: the box's own right edge when the left side is not clamped, so the crop
reaches 0.7 w beyond the box on the left and top and not at all on the right and
bottom. The harness reproduces the code, not the symmetric dilation it may mean.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from harness.core.errors import HarnessError

OBJECT_TASKS = ("focus_object", "change_object")
ATTRIBUTE_TASKS = ("focus_attribute", "change_attribute")
TASKS = ("focus_attribute", "change_attribute", "focus_object", "change_object")  # bash_scripts order
ANNOTATION_DIR = "genecis"  # config.py genecis_root: the repository's genecis/ folder
COCO_DIR = "val2017"  # config.py coco_root: COCO 2017 val images
VG_DIR = "VG_100K_all"  # config.py visual_genome_images: Visual Genome 1.2, all images
DILATION = 0.7  # vaw_dataset.py line 13


@dataclass(frozen=True)
class Picture:
    """One image of a template: its source file's stem and, for attribute tasks, the box."""

    source: str  # COCO: the 12-digit id; VG: the image id
    box: tuple[float, float, float, float] | None = None  # x, y, w, h

    @property
    def item(self) -> str:
        """The harness's id for it: one gallery item per distinct (image, box)."""
        if self.box is None:
            return f"coco/{self.source}"
        return f"vg/{self.source}/" + ",".join(f"{v:g}" for v in self.box)


@dataclass(frozen=True)
class Template:
    index: int  # position in the file's list
    reference: Picture
    target: Picture
    gallery: tuple[Picture, ...]
    condition: str


def read_task(path: Path, task: str) -> list[Template]:
    """The task's templates; an error names the file and the record's index."""
    if task not in TASKS:
        raise HarnessError(f"unknown GeneCIS task {task!r}; the tasks are {', '.join(TASKS)}")
    if not path.is_file():
        raise HarnessError(f"annotation file {path} is missing")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HarnessError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(records, list) or not records:
        raise HarnessError(f"{path}: expected a non-empty list of templates, got {type(records).__name__}")
    return [_template(record, task, f"{path}, record {i}", i) for i, record in enumerate(records)]


def _template(record, task: str, where: str, index: int) -> Template:
    if not isinstance(record, dict):
        raise HarnessError(f"{where}: a template is a dict, got {type(record).__name__}")
    missing = [k for k in ("reference", "target", "gallery", "condition") if k not in record]
    if missing:
        raise HarnessError(f"{where}: no {', '.join(missing)} (keys: {sorted(record)})")
    condition = record["condition"]
    if not isinstance(condition, str) or not condition.strip():
        raise HarnessError(f"{where}: the condition must be a non-empty string, got {condition!r}")
    gallery = record["gallery"]
    if not isinstance(gallery, list) or not gallery:
        raise HarnessError(f"{where}: the gallery must be a non-empty list of images")
    picture = _coco if task in OBJECT_TASKS else _visual_genome
    return Template(index, picture(record["reference"], f"{where}, reference"),
                    picture(record["target"], f"{where}, target"),
                    tuple(picture(g, f"{where}, gallery[{j}]") for j, g in enumerate(gallery)), condition.strip())


def _coco(image, where: str) -> Picture:
    if not isinstance(image, dict) or "val_image_id" not in image:
        raise HarnessError(f"{where}: an object task's image is {{\"val_image_id\": int}}, got {image!r}")
    value = image["val_image_id"]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise HarnessError(f"{where}: val_image_id must be a non-negative integer, got {value!r}")
    return Picture(f"{value:012d}")  # coco_dataset.py line 24


def _visual_genome(image, where: str) -> Picture:
    if not isinstance(image, dict) or "image_id" not in image or "instance_bbox" not in image:
        raise HarnessError(f"{where}: an attribute task's image has image_id and instance_bbox, got {image!r}")
    value = image["image_id"]
    if isinstance(value, bool) or not (isinstance(value, int) and value >= 0 or
                                       isinstance(value, str) and value.isdigit()):
        raise HarnessError(f"{where}: image_id must be a non-negative integer or a string of digits, got {value!r}")
    box = image["instance_bbox"]
    if not (isinstance(box, list) and len(box) == 4 and
            all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in box)):
        raise HarnessError(f"{where}: instance_bbox must be [x, y, width, height], got {box!r}")
    x, y, w, h = (float(v) for v in box)
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise HarnessError(f"{where}: instance_bbox {box} needs x, y >= 0 and a positive width and height")
    return Picture(str(value), (x, y, w, h))


def image_file(root: Path, picture: Picture) -> Path:
    if picture.box is None:
        return root / COCO_DIR / f"{picture.source}.jpg"
    return root / VG_DIR / f"{picture.source}.jpg"


def crop_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) as vaw_dataset.py lines 53-56 compute it."""
    x, y, w, h = box
    left, top = max(0.0, x - DILATION * w), max(0.0, y - DILATION * h)
    return left, top, min(width, left + (1 + DILATION) * w), min(height, top + (1 + DILATION) * h)


def cropped(image: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
    """GeneCIS's crop of `image` (RGB) around `box`, padded to a black square (lines 61-68);
    a box outside the image is an error, not an empty crop."""
    left, top, right, bottom = crop_box(box, *image.size)
    if right - left < 1 or bottom - top < 1:
        raise ValueError(f"box {list(box)} lies outside the {image.size[0]}x{image.size[1]} image")
    piece = image.crop((left, top, right, bottom))  # PIL rounds the corners to pixels
    width, height = piece.size
    if width == height:
        return piece
    side = max(width, height)
    square = Image.new(piece.mode, (side, side), (0, 0, 0))
    square.paste(piece, ((side - width) // 2, (side - height) // 2))  # expand2square
    return square
