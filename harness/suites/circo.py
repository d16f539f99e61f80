"""CIRCO (Baldrati et al., ICCV 2023), read from --data-root in its official layout,
or a generated stand-in (harness/suites/circo_generator.py) without one.

    <root>/annotations/{val,test}.json
    <root>/COCO2017_unlabeled/annotations/image_info_unlabeled2017.json
    <root>/COCO2017_unlabeled/unlabeled2017/<file_name>   (COCO: the id as 12 digits, .jpg)

Protocol (CIRCO's evaluation, as CoVR runs it):
- the gallery is every image of image_info_unlabeled2017.json (the real one: all
  123,403 COCO unlabeled2017 images; the generated one: a few hundred), read from
  that file, never from a folder listing; val and test share it;
- the query's reference image is removed from its ranking (CoVR);
- val: mAP@{5,10,25,50} over every ground truth (gt_img_ids), AP@K normalised by
  min(#ground truths, K), and Recall@{5,10,25,50} on the annotated target_img_id;
- test has no targets: the run writes the server file, {"<query id>": [50 image ids]}
  for every query, without duplicates (the server rejects them).

Query text (`--query-template`): `caption` (default) feeds the relative caption, as
CoVR does (src/test/blip/circo.py and src/test/blip2/circo.py read
batch["relative_caption"]); `shared-concept` feeds "find {shared_concept} but
{relative_caption}", as MagicLens does (google-deepmind/magiclens data_utils.py line
173) and BGE-VL / MegaPairs report their CIRCO numbers with (VectorSpaceLab/MegaPairs
issues 15 and 33: without the shared concept their mAP does not match). Caption
cleaning (`--caption-cleaning`) applies to the text the template makes.

CIRCO has no train split: it measures zero-shot retrieval (CoVR trains on
WebVid-CoVR). A run that fine-tunes (blip-tiny's default) trains on the `shapes`
dataset the generator writes beside the generated CIRCO (zero_shot_train/), in the
same visual domain, and evaluates on CIRCO zero-shot; with the real CIRCO, evaluate
a checkpoint trained elsewhere: --checkpoint DIR --no-train.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from harness.core.errors import HarnessError
from harness.suites import circo_generator
from harness.suites.base import Query, SplitData, register_suite
from harness.suites.circo_generator import IMAGE_DIR, INFO_FILE, TRAIN_DIR
from harness.suites.cirr_layout import read_json
from harness.suites.generated import default_root, ensure_generated
from harness.suites.shapes import ShapesSuite

DEFAULT_SPEC = circo_generator.CircoSpec()

# Reading rules, part of the embedding-cache key: bump when a change alters the queries read.
READER_VERSION = 1
QUERY_TEMPLATES = {"caption": "{relative_caption}", "shared-concept": "find {shared_concept} but {relative_caption}"}

LAYOUT = """Expected layout (CIRCO):
  {root}/annotations/val.json, {root}/annotations/test.json
  {root}/{info}
  {root}/{images}/<12-digit id>.jpg
  annotations: https://github.com/miccunifi/CIRCO ; images: COCO 2017 unlabeled (cocodataset.org)"""

NO_TRAIN_SPLIT = (
    "CIRCO has no train split (it is evaluated zero-shot). Evaluate a checkpoint trained "
    "elsewhere: --checkpoint DIR --no-train (a blip-tiny run on shapes or cirr writes one "
    "under <out>/checkpoints/). Only the generated CIRCO carries a training set beside it "
    f"({TRAIN_DIR}/)."
)


def read_circo(root: Path, split: str, suite: str, query_template: str = "caption") -> SplitData:
    help_text = LAYOUT.format(root=root, info=INFO_FILE, images=IMAGE_DIR)
    annotation_file = root / "annotations" / f"{split}.json"
    info_file = root / INFO_FILE
    entries = read_json(annotation_file, "annotation file", help_text)
    info = read_json(info_file, "image info file", help_text)
    images = info.get("images") if isinstance(info, dict) else None
    if not isinstance(images, list) or not images:
        raise HarnessError(f"{info_file} must be an object with a non-empty \"images\" list")
    image_paths: dict[str, Path] = {}
    for image in images:
        if not isinstance(image, dict) or not isinstance(image.get("id"), int) or not isinstance(
            image.get("file_name"), str
        ):
            raise HarnessError(f"{info_file}: every image needs an integer id and a file_name, got {image!r:.80}")
        image_id = str(image["id"])
        if image_id in image_paths:
            raise HarnessError(f"{info_file}: image id {image_id} appears twice")
        image_paths[image_id] = (root / IMAGE_DIR / image["file_name"]).resolve()
    if not isinstance(entries, list) or not entries:
        raise HarnessError(f"annotation file {annotation_file} must hold a non-empty list of queries")
    has_targets = split == "val"
    queries = [_parse(entry, f"{annotation_file}, entry {i}", has_targets, image_paths, query_template)
               for i, entry in enumerate(entries)]
    if len({q.pair_id for q in queries}) != len(queries):
        raise HarnessError(f"{annotation_file}: a query id appears twice")
    provenance = {
        "root": str(root),
        "gallery": "image-info file (COCO 2017 unlabeled)",
        "reader_version": READER_VERSION,  # part of the embedding-cache key
        "annotation_file": str(annotation_file),
        "caption_sha256": _sha256(annotation_file),  # the embedding cache keys on these two
        "image_info_file": str(info_file),
        "split_sha256": _sha256(info_file),
    }
    if query_template != "caption":  # the embedding cache keys on the provenance: a new text, a new key
        provenance["query_template"] = query_template
    return SplitData(suite, split, queries, list(image_paths), image_paths, has_targets, help_text, provenance)


def _parse(entry, where: str, has_targets: bool, gallery: dict, query_template: str) -> Query:
    if not isinstance(entry, dict):
        raise HarnessError(f"{where}: every query must be an object, got {entry!r:.80}")
    required = ["id", "reference_img_id", "relative_caption"] + (
        ["target_img_id", "gt_img_ids"] if has_targets else [])
    missing = [key for key in required if key not in entry]
    if missing:
        raise HarnessError(f"{where}: missing field(s) {', '.join(missing)}")
    if not isinstance(entry["relative_caption"], str):
        raise HarnessError(f"{where}: relative_caption must be a string")
    if query_template == "shared-concept" and not isinstance(entry.get("shared_concept"), str):
        raise HarnessError(f"{where}: --query-template shared-concept needs a shared_concept string in every query")
    ids = [entry["id"], entry["reference_img_id"]]
    if has_targets:
        ids += [entry["target_img_id"], *entry["gt_img_ids"]] if isinstance(entry["gt_img_ids"], list) else [None]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise HarnessError(f"{where}: id, reference_img_id, target_img_id and gt_img_ids must be integers")
    reference = str(entry["reference_img_id"])
    target = str(entry["target_img_id"]) if has_targets else None
    ground_truths: tuple[str, ...] = ()
    if has_targets:
        others = [str(g) for g in entry["gt_img_ids"] if str(g) != target]
        if len(set(others)) != len(others):
            raise HarnessError(f"{where}: gt_img_ids lists an image twice")
        ground_truths = (target, *others)  # CIRCO puts the target first already
    for role, image_id in [("reference_img_id", reference), *(("gt_img_ids", g) for g in ground_truths)]:
        if image_id not in gallery:
            raise HarnessError(f"{where}: {role} {image_id} is not in the image info file")
    text = QUERY_TEMPLATES[query_template].format(relative_caption=entry["relative_caption"],
                                                  shared_concept=entry.get("shared_concept"))
    return Query(entry["id"], reference, text, target, ground_truths=ground_truths)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@register_suite("circo")
class CircoSuite:
    name = "circo"
    splits = ("val", "test")
    default_split = "val"
    scoring = "circo"  # harness/evaluation/protocols/circo.py
    options = ("query_template",)  # RunConfig fields it takes

    def __init__(self, data_root: Path | None = None, query_template: str = "caption"):
        if query_template not in QUERY_TEMPLATES:
            raise HarnessError(f"--query-template must be one of {', '.join(QUERY_TEMPLATES)}, not {query_template!r}")
        self.query_template = query_template
        self.manifest: dict | None = None
        if data_root is None:
            self.root = default_root("circo", circo_generator.describe(DEFAULT_SPEC))
            self.manifest = ensure_generated(
                self.root, "circo", lambda: circo_generator.generate(self.root, DEFAULT_SPEC)
            )
            return
        self.root = Path(data_root)
        if not self.root.is_dir():
            raise HarnessError(f"--data-root {data_root} does not exist.\n"
                               + LAYOUT.format(root=data_root, info=INFO_FILE, images=IMAGE_DIR))
        if (self.root / "manifest.json").is_file():
            self.manifest = json.loads((self.root / "manifest.json").read_text())

    def load(self, split: str) -> SplitData:
        if split not in self.splits:
            hint = f" {NO_TRAIN_SPLIT}" if split == "train" else ""
            raise HarnessError(f"circo has splits {', '.join(self.splits)}, not {split!r}.{hint}")
        data = read_circo(self.root, split, self.name, self.query_template)
        if self.manifest is not None:
            data.provenance["manifest"] = self.manifest
        return data

    def load_training(self, split: str) -> SplitData:
        """The data a run fine-tunes on: the shapes dataset beside a generated CIRCO."""
        train_root = self.root / TRAIN_DIR
        if not (train_root / "manifest.json").is_file():
            raise HarnessError(NO_TRAIN_SPLIT)
        return ShapesSuite(train_root).load(split)
