"""Seeded generator of a small dataset in GeneCIS's layout and exact JSON format
(harness/suites/genecis_layout.py), so the `genecis` suite, its tests and offline demos
run without COCO and Visual Genome (and without GeneCIS's non-commercial files).

Every template is a `shapes` scene (harness/suites/scenes.py) and one of its edits: the
condition is the edit's caption, the target the edited scene, and the gallery the
scene's other edits (hard distractors: the same reference, another change) and edits of
other scenes. Object tasks write each scene as a COCO-named image
(`val2017/<12-digit id>.jpg`); attribute tasks paste it into a larger cluttered canvas
(`VG_100K_all/<id>.jpg`) with an `instance_bbox` placed so that GeneCIS's dilated crop
(genecis_layout.crop_box) is exactly the scene: the box is the scene's lower-right
1/1.7 part. Every attribute target shares its canvas with its first gallery image (one
picture, two boxes), as Visual Genome images hold several annotated objects.

    root/genecis/{focus_attribute,change_attribute,focus_object,change_object}.json
    root/val2017/<12-digit id>.jpg   root/VG_100K_all/<id>.jpg
    root/zero_shot_train/   a `shapes` dataset to fine-tune on (GeneCIS has no train split)
    root/manifest.json
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from harness.core.progress import progress
from harness.suites import shapes_generator
from harness.suites.genecis_layout import (
    ANNOTATION_DIR,
    COCO_DIR,
    DILATION,
    OBJECT_TASKS,
    TASKS,
    VG_DIR,
)
from harness.suites.generated import write_dataset
from harness.suites.scenes import apply_edit, base_scene, caption_for, plan_edits, render_scene

GENERATOR_VERSION = 1
TRAIN_DIR = "zero_shot_train"
JPEG_QUALITY = 95


@dataclass(frozen=True)
class GeneCISSpec:
    seed: int = 0
    image_size: int = 64
    templates: int = 40  # per task
    gallery: int = 9  # gallery images per template (the real object files: 14), the target apart
    train_sets: int = 3000  # shapes image sets in zero_shot_train/ (5 queries each); 0 for none


def describe(spec: GeneCISSpec) -> dict:
    return {"generator": "genecis_generator", "generator_version": GENERATOR_VERSION, "seed": spec.seed,
            "image_size": spec.image_size, "templates": spec.templates, "gallery": spec.gallery,
            "train_sets": spec.train_sets}


def box_for(left: int, top: int, size: int) -> list[float]:
    """The instance_bbox whose GeneCIS crop is the square (left, top, size): width
    size / 1.7, placed 0.7 of it right of and below the square's corner."""
    side = size / (1 + DILATION)
    return [round(left + DILATION * side, 3), round(top + DILATION * side, 3), round(side, 3), round(side, 3)]


class _Writer:
    """Images written under tmp/, each with the next id."""

    def __init__(self, tmp: Path, spec: GeneCISSpec, rng: random.Random):
        self.tmp, self.spec, self.rng, self.next_id = tmp, spec, rng, 1000

    def _id(self) -> int:
        self.next_id += 1 + self.rng.randrange(3)
        return self.next_id

    def coco(self, scene) -> dict:
        image_id = self._id()
        self._save(render_scene(scene, self.spec.image_size), self.tmp / COCO_DIR / f"{image_id:012d}.jpg")
        return {"val_image_id": image_id}

    def visual_genome(self, *scenes) -> list[dict]:
        """One cluttered canvas holding the scenes side by side: one picture per scene."""
        size, image_id = self.spec.image_size, self._id()
        canvas = Image.new("RGB", (len(scenes) * (size + 8) + 24, size + 40), (150, 150, 150))
        draw = ImageDraw.Draw(canvas)
        for _ in range(12):  # clutter outside the scenes
            x, y = self.rng.randrange(canvas.width), self.rng.randrange(canvas.height)
            draw.rectangle((x, y, x + 6, y + 6), fill=tuple(self.rng.randrange(256) for _ in range(3)))
        pictures = []
        for k, scene in enumerate(scenes):
            left, top = 8 + k * (size + 8) + self.rng.randrange(8), 8 + self.rng.randrange(24)
            canvas.paste(render_scene(scene, size), (left, top))
            pictures.append({"image_id": str(image_id), "instance_bbox": box_for(left, top, size)})
        self._save(canvas, self.tmp / VG_DIR / f"{image_id}.jpg")
        return pictures

    def _save(self, image: Image.Image, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=JPEG_QUALITY)


def _template(writer: _Writer, rng: random.Random, task: str) -> dict:
    scene = base_scene(rng)
    edits = plan_edits(scene, rng)
    others = [apply_edit(scene, e) for e in edits[1:]]
    while len(others) < writer.spec.gallery:
        other = base_scene(rng)
        others.append(apply_edit(other, plan_edits(other, rng)[0]))
    others = others[: writer.spec.gallery]
    target = apply_edit(scene, edits[0])
    if task in OBJECT_TASKS:
        reference, target_image = writer.coco(scene), writer.coco(target)
        gallery = [writer.coco(s) for s in others]
    else:
        (reference,) = writer.visual_genome(scene)
        target_image, first = writer.visual_genome(target, others[0])
        gallery = [first, *(writer.visual_genome(s)[0] for s in others[1:])]
    rng.shuffle(gallery)
    return {"reference": reference, "target": target_image, "gallery": gallery,
            "condition": caption_for(edits[0], scene, rng)}


def _write(tmp: Path, spec: GeneCISSpec) -> dict:
    rng = random.Random(f"genecis:{spec.seed}")
    writer = _Writer(tmp, spec, rng)
    counts = {}
    for task in TASKS:
        templates = [_template(writer, rng, task) for _ in progress(range(spec.templates), desc=f"genecis {task}",
                                                                    unit="template")]
        path = tmp / ANNOTATION_DIR / f"{task}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(templates))
        counts[task] = len(templates)
    if spec.train_sets:
        shapes_generator.generate(tmp / TRAIN_DIR, shapes_generator.ShapesSpec(
            seed=spec.seed, image_size=spec.image_size, sets={"train": spec.train_sets},
            queries_per_set={"train": 5}))
    return {"templates": counts}


def generate(root: Path, spec: GeneCISSpec) -> dict:
    """Write the dataset to `root` atomically and return its manifest."""
    return write_dataset(root, describe(spec), lambda tmp: _write(tmp, spec))
