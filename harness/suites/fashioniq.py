"""FashionIQ (Wu et al., CVPR 2021), read from --data-root in the standard layout, or
a generated stand-in (harness/suites/fashioniq_generator.py) without one.

    <root>/captions/cap.<category>.<split>.json       [{"candidate", "target", "captions": [c1, c2]}]
    <root>/image_splits/split.<category>.<split>.json [image id, ...]
    <root>/images/<id>.png  (or <id>.jpg)

categories dress, shirt, toptee; splits train, val, test (test has no targets).

Conventions (CoVR's evaluation, which its FashionIQ numbers come from):
- the query text joins the two relative captions as "c1 and c2" (suite `fashioniq`);
  suite `fashioniq-both-orders` gives each annotation as two queries, "c1 and c2" and
  "c2 and c1", sharing its pair id, and scores the mean of their normalised
  embeddings (re-normalised; for single-vector features this ranks exactly as the
  mean of the two scores). Captions are used as written, stripped of spaces (CoVR
  also lower-cases them and drops some punctuation; the BLIP tokenizers are uncased);
- each category is its own gallery: the images of its split file; a query is ranked
  within its category's gallery only;
- the query's reference image is removed from its ranking (CoVR; CLIP4Cir keeps it);
- Recall@10 and Recall@50 per category, their mean over categories, and
  Avg = (mean R@10 + mean R@50) / 2. Results are reported on val.

Pair ids number the annotations in order: dress, then shirt, then toptee, each in
its caption file's order. Images are looked up by id under images/ (.png first,
then .jpg); the gallery comes from the split files, never from a folder listing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from harness.core.errors import HarnessError
from harness.suites import fashioniq_generator
from harness.suites.base import Query, SplitData, register_suite
from harness.suites.cirr_layout import read_json
from harness.suites.generated import default_root, ensure_generated

CATEGORIES = ("dress", "shirt", "toptee")
CAPTION_RULES = {"and": "c1 and c2 (CoVR)", "both": "mean of c1 and c2 / c2 and c1"}
IMAGE_SUFFIXES = (".png", ".jpg")
DEFAULT_SPEC = fashioniq_generator.FashionIQSpec()

# Reading rules, part of the embedding-cache key: bump when a change alters the queries read.
READER_VERSION = 1

LAYOUT = """Expected layout (FashionIQ):
  {root}/captions/cap.<dress|shirt|toptee>.<train|val|test>.json
  {root}/image_splits/split.<dress|shirt|toptee>.<train|val|test>.json
  {root}/images/<id>.png (or .jpg)
  annotations: https://github.com/XiaoxiaoGuo/fashion-iq (images by ASIN, as distributed there)"""


def join_captions(first: str, second: str) -> str:
    return f"{first.strip()} and {second.strip()}"


def read_fashioniq(root: Path, split: str, suite: str, caption_rule: str,
                   categories: tuple[str, ...] = CATEGORIES) -> SplitData:
    help_text = LAYOUT.format(root=root)
    queries: list[Query] = []
    groups: dict[str, list[str]] = {}
    files: dict[str, str] = {}
    referenced: list[str] = []
    targets_seen: list[bool] = []
    skipped = annotations = 0
    for category in categories:
        caption_file = root / "captions" / f"cap.{category}.{split}.json"
        split_file = root / "image_splits" / f"split.{category}.{split}.json"
        entries = read_json(caption_file, "caption file", help_text)
        image_ids = read_json(split_file, "split file", help_text)
        if not isinstance(image_ids, list) or not all(isinstance(i, str) for i in image_ids):
            raise HarnessError(f"split file {split_file} must be a list of image ids (strings)")
        if len(set(image_ids)) != len(image_ids):
            raise HarnessError(f"split file {split_file} lists an image id twice")
        if not isinstance(entries, list):
            raise HarnessError(f"caption file {caption_file} must hold a list of annotations")
        groups[category] = image_ids
        in_gallery = set(image_ids)
        files[str(caption_file.relative_to(root))] = _sha256(caption_file)
        files[str(split_file.relative_to(root))] = _sha256(split_file)
        for index, entry in enumerate(entries):
            where = f"{caption_file}, entry {index}"
            candidate, target, captions = _parse_entry(entry, where)
            targets_seen.append(target is not None)
            if split != "train" and target is not None and target not in in_gallery:
                raise HarnessError(f"{where}: target {target!r} is not in {split_file}")
            pair_id = annotations  # counts every annotation, skipped ones too
            annotations += 1
            if split == "train" and target == candidate:
                skipped += 1  # nothing to learn from; scored splits keep it (a sure miss, as in CoVR)
                continue
            orders = [captions] if caption_rule == "and" else [captions, captions[::-1]]
            for first, second in orders:
                queries.append(Query(pair_id, candidate, join_captions(first, second), target, group=category))
            referenced += [candidate] + ([target] if target is not None else [])
    if any(targets_seen) and not all(targets_seen):
        raise HarnessError(f"FashionIQ {split}: some annotations have a target and some do not")
    if not queries:
        raise HarnessError(f"FashionIQ {split} at {root} holds no annotation")
    gallery = list(dict.fromkeys(i for ids in groups.values() for i in ids))
    image_paths = {i: _image_path(root, i) for i in dict.fromkeys([*gallery, *referenced])}
    provenance = {
        "root": str(root),
        "gallery": "split file of each category",
        "reader_version": READER_VERSION,  # part of the embedding-cache key
        "caption_rule": CAPTION_RULES[caption_rule],
        "categories": list(categories),
        "files_sha256": files,
        # the embedding cache keys on these two: every caption file, every split file
        "caption_sha256": _combined(v for k, v in files.items() if k.startswith("captions")),
        "split_sha256": _combined(v for k, v in files.items() if k.startswith("image_splits")),
    }
    if skipped:
        provenance["skipped_reference_is_target"] = skipped
    has_targets = all(targets_seen)
    return SplitData(suite, split, queries, gallery, image_paths, has_targets, help_text, provenance, groups)


def _parse_entry(entry, where: str) -> tuple[str, str | None, tuple[str, str]]:
    if not isinstance(entry, dict):
        raise HarnessError(f"{where}: every annotation must be an object, got {entry!r:.80}")
    captions = entry.get("captions")
    if not isinstance(captions, list) or len(captions) != 2 or not all(isinstance(c, str) for c in captions):
        raise HarnessError(f"{where}: captions must be a list of two strings, got {captions!r:.80}")
    candidate, target = entry.get("candidate"), entry.get("target")
    if not isinstance(candidate, str):
        raise HarnessError(f"{where}: candidate must be an image id (a string), got {candidate!r:.40}")
    if target is not None and not isinstance(target, str):
        raise HarnessError(f"{where}: target must be an image id (a string), got {target!r:.40}")
    return candidate, target, (captions[0], captions[1])


def _image_path(root: Path, image_id: str) -> Path:
    for suffix in IMAGE_SUFFIXES:
        path = root / "images" / f"{image_id}{suffix}"
        if path.is_file():
            return path.resolve()
    return (root / "images" / f"{image_id}{IMAGE_SUFFIXES[0]}").resolve()  # reported missing later


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _combined(hashes) -> str:
    return hashlib.sha256("".join(hashes).encode()).hexdigest()


@register_suite("fashioniq")
class FashionIQSuite:
    name = "fashioniq"
    splits = ("train", "val", "test")
    default_split = "val"
    scoring = "fashioniq"  # harness/evaluation/protocols/fashioniq.py
    caption_rule = "and"

    def __init__(self, data_root: Path | None = None):
        self.manifest: dict | None = None
        if data_root is None:
            self.root = default_root("fashioniq", fashioniq_generator.describe(DEFAULT_SPEC))
            self.manifest = ensure_generated(
                self.root, "fashioniq", lambda: fashioniq_generator.generate(self.root, DEFAULT_SPEC)
            )
            return
        self.root = Path(data_root)
        if not self.root.is_dir():
            raise HarnessError(f"--data-root {data_root} does not exist.\n" + LAYOUT.format(root=data_root))
        manifest = self.root / "manifest.json"
        if manifest.is_file():
            self.manifest = json.loads(manifest.read_text())

    def load(self, split: str) -> SplitData:
        if split not in self.splits:
            raise HarnessError(f"{self.name} has splits {', '.join(self.splits)}, not {split!r}")
        data = read_fashioniq(self.root, split, self.name, self.caption_rule)
        if self.manifest is not None:
            data.provenance["manifest"] = self.manifest
        return data


@register_suite("fashioniq-both-orders")
class FashionIQBothOrdersSuite(FashionIQSuite):
    name = "fashioniq-both-orders"
    caption_rule = "both"
