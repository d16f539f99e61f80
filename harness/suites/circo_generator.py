"""Seeded generator of a small dataset in the CIRCO layout, so the `circo` suite, its
tests and offline demos run without COCO.

The pictures are `shapes` scenes (harness/suites/scenes.py). A query is a
reference scene and one templated edit; its ground truths are the edited scene
drawn on 1 to 1 + max_extra_ground_truths slightly different backgrounds (several
images satisfy the query, as several COCO images do in CIRCO), the first being the
annotated target. The gallery ("unlabeled2017") holds every query's images, four
other edits of its reference (two or three of them the same edit with another
value), drawn on any of the backgrounds so the background is no cue, and random
distractor scenes; val and test share it, as they share COCO unlabeled2017.

    root/annotations/{val,test}.json
        val:  [{"id", "reference_img_id", "target_img_id", "relative_caption",
                "shared_concept", "gt_img_ids"}]   (gt_img_ids[0] == target_img_id)
        test: [{"id", "reference_img_id", "relative_caption", "shared_concept"}]
    root/COCO2017_unlabeled/annotations/image_info_unlabeled2017.json  {"images": [{"id", "file_name", ...}]}
    root/COCO2017_unlabeled/unlabeled2017/<id as 12 digits>.jpg
    root/zero_shot_train/   a `shapes` dataset (CIRR layout) to fine-tune on: CIRCO
                            has no train split, models are evaluated on it zero-shot
    root/manifest.json
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from harness.suites import shapes_generator
from harness.suites.generated import write_dataset, write_json
from harness.suites.scenes import (
    BACKGROUND,
    Scene,
    apply_edit,
    base_scene,
    caption_for,
    plan_edits,
    render_scene,
)

GENERATOR_VERSION = 1
SPLITS = ("val", "test")
# Background of each drawing of a scene: variant 0 is the shapes background.
BACKGROUNDS = (BACKGROUND, (246, 246, 240), (240, 244, 250), (250, 243, 236))
INFO_FILE = Path("COCO2017_unlabeled") / "annotations" / "image_info_unlabeled2017.json"
IMAGE_DIR = Path("COCO2017_unlabeled") / "unlabeled2017"
TRAIN_DIR = "zero_shot_train"


def file_name(image_id: int) -> str:
    """COCO's rule: the id as 12 digits, .jpg."""
    return f"{image_id:012d}.jpg"


@dataclass(frozen=True)
class CircoSpec:
    seed: int = 0
    image_size: int = 64
    queries: dict = field(default_factory=lambda: {"val": 120, "test": 120})
    distractors: int = 300
    max_extra_ground_truths: int = 3  # at most len(BACKGROUNDS) - 1
    train_sets: int = 3000  # shapes image sets in zero_shot_train/ (5 queries each); 0 for none


def describe(spec: CircoSpec) -> dict:
    if set(spec.queries) - set(SPLITS) or any(n < 1 for n in spec.queries.values()):
        raise ValueError(f"queries must give 1 or more for some of {SPLITS}, got {spec.queries}")
    if not 0 <= spec.max_extra_ground_truths < len(BACKGROUNDS):
        raise ValueError(f"max_extra_ground_truths must be in 0..{len(BACKGROUNDS) - 1}")
    return {
        "generator": "circo",
        "generator_version": GENERATOR_VERSION,
        "seed": spec.seed,
        "image_size": spec.image_size,
        "queries": {s: spec.queries[s] for s in SPLITS if s in spec.queries},
        "distractors": spec.distractors,
        "max_extra_ground_truths": spec.max_extra_ground_truths,
        "train_sets": spec.train_sets,
    }


def _rng(seed: int, *parts) -> random.Random:
    digest = hashlib.sha256("/".join(map(str, ("circo", seed, *parts))).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def render(scene: Scene, variant: int, image_size: int) -> Image.Image:
    image = np.asarray(render_scene(scene, image_size)).copy()
    if variant:
        image[(image == BACKGROUND).all(-1)] = BACKGROUNDS[variant]
    return Image.fromarray(image)


class _Gallery:
    """The shared image pool: one id per (scene, background variant)."""

    def __init__(self, out: Path, image_size: int):
        self.out, self.image_size = out, image_size
        self.ids: dict[tuple[Scene, int], int] = {}
        self.images: list[dict] = []

    def image_id(self, scene: Scene, variant: int = 0) -> int:
        key = (scene, variant)
        if key not in self.ids:
            image_id = 7 * len(self.ids) + 3  # not the row number, so the two never get confused
            self.ids[key] = image_id
            name = file_name(image_id)
            render(scene, variant, self.image_size).save(self.out / IMAGE_DIR / name, format="JPEG", quality=95)
            self.images.append({"id": image_id, "file_name": name,
                                "width": self.image_size, "height": self.image_size})
        return self.ids[key]


def _query(gallery: _Gallery, spec: CircoSpec, split: str, index: int) -> dict:
    rng = _rng(spec.seed, split, index)
    reference = base_scene(rng)
    edits = plan_edits(reference, rng)  # 5 edits with distinct results, 2-3 siblings first
    edit = edits[0]
    target = apply_edit(reference, edit)
    caption = caption_for(edit, reference, rng)
    extra = rng.randint(0, spec.max_extra_ground_truths)
    ground_truths = [gallery.image_id(target, v) for v in range(1 + extra)]
    reference_id = gallery.image_id(reference)
    for other in edits[1:]:  # hard negatives, on any background so that is no cue
        gallery.image_id(apply_edit(reference, other), rng.randrange(len(BACKGROUNDS)))
    concept = "the scene" if edit.kind == "add" else f"the {edit.obj.shape}"
    query = {"id": index, "reference_img_id": reference_id, "relative_caption": caption,
             "shared_concept": concept}
    if split == "test":  # CIRCO hides test targets
        return query
    return {**query, "target_img_id": ground_truths[0], "gt_img_ids": ground_truths}


def generate(root: Path, spec: CircoSpec) -> dict:
    """Write the dataset to `root` atomically and return its manifest."""
    return write_dataset(root, describe(spec), lambda tmp: _write(tmp, spec))


def _write(tmp: Path, spec: CircoSpec) -> dict:
    (tmp / IMAGE_DIR).mkdir(parents=True)
    gallery = _Gallery(tmp, spec.image_size)
    for split in [s for s in SPLITS if s in spec.queries]:
        queries = [_query(gallery, spec, split, i) for i in range(spec.queries[split])]
        write_json(tmp / "annotations" / f"{split}.json", queries)
    rng = _rng(spec.seed, "distractors")
    for _ in range(spec.distractors):
        gallery.image_id(base_scene(rng))
    write_json(tmp / INFO_FILE, {
        "info": {"description": "generated stand-in for COCO 2017 unlabeled images (coir-bench)"},
        "images": gallery.images,
    })
    if spec.train_sets:
        shapes_generator.generate(tmp / TRAIN_DIR, shapes_generator.ShapesSpec(
            seed=spec.seed, image_size=spec.image_size,
            sets={"train": spec.train_sets}, queries_per_set={"train": 5},
        ))
    return {"images": len(gallery.images)}
