"""Reading a dataset in the CIRR layout (real CIRR, or one written by a generator).

    <root>/captions/cap.<version>.<split>.json      queries
    <root>/image_splits/split.<version>.<split>.json {image id: "./<relative path>"}
    <root>/dev/, <root>/test1/, <root>/train/<n>/    images (the paths in the split file)

The gallery of a split is the ordered keys of its split file.

Annotations are checked as they are read; a problem is an error naming the file
and the pair id: invalid JSON, a record that is not an object, a missing field or
one of the wrong type, a duplicate pair id, a reference, target, img_set member or
soft target absent from the split file. A query that breaks the protocol (see
SKIPPED_SPLITS) is an error too, except in the train split, where it is skipped and
counted in the split's provenance. Real CIRR val and test1 have none (every img_set
has 6 members holding the reference and the target; no reference is its target).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import replace
from pathlib import Path

from harness.core.errors import HarnessError
from harness.core.progress import say
from harness.suites.base import Query, SplitData
from harness.suites.image_files import image_problem

LAYOUT = """Expected layout (CIRR):
  {root}/captions/cap.{version}.<split>.json
  {root}/image_splits/split.{version}.<split>.json
  {root}/dev/<id>.png, {root}/test1/<id>.png, {root}/train/<n>/<id>.png
  (image paths are those listed in the split file, relative to {root})"""

# Reading rules, part of the embedding-cache key: bump when a change alters the queries read.
READER_VERSION = 2
IMG_SET_SIZE = 6  # CIRR: every image set has 6 images, the reference among them
# Splits where a query that breaks the protocol (reference equal to target_hard, an
# img_set without 6 distinct members or without its reference or target) is skipped
# and counted in the provenance; anywhere else it is an error. Training never reads
# img_set and reports no number; a scored split must keep every query.
SKIPPED_SPLITS = ("train",)

# Split files list paths; these are the folders they point into.
IMAGE_DIRS = {"train": "train", "val": "dev", "test1": "test1"}


def layout_help(root: Path, version: str) -> str:
    return LAYOUT.format(root=root, version=version)


def read_json(path: Path, what: str, help_text: str):
    if not path.is_file():
        raise HarnessError(f"{what} not found: {path}\n{help_text}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HarnessError(f"{what} {path} is not valid JSON: {err}") from err


def read_split(root: Path, version: str, split: str, suite: str) -> SplitData:
    help_text = layout_help(root, version)
    caption_file = root / "captions" / f"cap.{version}.{split}.json"
    split_file = root / "image_splits" / f"split.{version}.{split}.json"
    raw_queries = read_json(caption_file, "caption file", help_text)
    raw_split = read_json(split_file, "split file", help_text)
    if not isinstance(raw_split, dict) or not raw_split:
        raise HarnessError(f"split file {split_file} must be a non-empty {{id: path}} object")
    bad_paths = [image_id for image_id, rel in raw_split.items() if not isinstance(rel, str) or not rel]
    if bad_paths:
        raise HarnessError(f"split file {split_file}: image {bad_paths[0]!r} has no path (a string)")
    if not isinstance(raw_queries, list):
        raise HarnessError(f"caption file {caption_file} must hold a list of queries")
    gallery = list(raw_split)
    image_paths = {image_id: (root / rel).resolve() for image_id, rel in raw_split.items()}
    has_targets = split != "test1"
    queries: list[Query] = []
    skipped: dict[str, list[int]] = {}
    seen: set[int] = set()
    for item in raw_queries:
        query, problem = _parse_query(item, caption_file, has_targets, raw_split)
        if query.pair_id in seen:
            raise HarnessError(f"{caption_file}: pair id {query.pair_id} appears twice")
        seen.add(query.pair_id)
        if problem is None:
            queries.append(query)
        elif split in SKIPPED_SPLITS:
            skipped.setdefault(problem, []).append(query.pair_id)
        else:
            raise HarnessError(f"{caption_file}, pair id {query.pair_id}: {problem}")
    if not queries:
        raise HarnessError(f"caption file {caption_file} holds no usable query")
    provenance = {
        "root": str(root),
        "gallery": "split file",
        "version": version,
        "reader_version": READER_VERSION,
        "caption_file": str(caption_file),
        "caption_sha256": _sha256(caption_file),
        "split_file": str(split_file),
        "split_sha256": _sha256(split_file),
    }
    if skipped:
        provenance["skipped"] = {reason: len(ids) for reason, ids in skipped.items()}
        provenance["skipped_pair_ids"] = {reason: ids[:20] for reason, ids in skipped.items()}
        counts = ", ".join(f"{len(ids)} {reason} (first pair id {ids[0]})" for reason, ids in skipped.items())
        say(f"warning: {caption_file}: skipped {sum(map(len, skipped.values()))} training queries: {counts}")
    return SplitData(suite, split, queries, gallery, image_paths, has_targets, help_text, provenance)


def _parse_query(item, caption_file: Path, has_targets: bool, gallery: dict) -> tuple[Query, str | None]:
    """The query, and what breaks the CIRR protocol in it (None if nothing): errors in
    the record itself raise HarnessError naming the file and the pair id."""
    if not isinstance(item, dict):
        raise HarnessError(f"{caption_file}: every query must be an object, got {item!r:.80}")
    where = f"{caption_file}, pair id {item.get('pairid', '?')!r:.40}"
    required = ["pairid", "reference", "caption", "img_set"]
    if has_targets:
        required += ["target_hard", "target_soft"]
    missing = [key for key in required if key not in item]
    if missing:
        raise HarnessError(f"{where}: missing field(s) {', '.join(missing)}")
    pair_id = item["pairid"]
    if isinstance(pair_id, bool) or not isinstance(pair_id, int):
        raise HarnessError(f"{where}: pairid must be an integer, got {pair_id!r:.40}")
    img_set = item["img_set"]
    members = img_set.get("members") if isinstance(img_set, dict) else None
    soft = item.get("target_soft", {}) if has_targets else {}
    wrong = _wrong_types(item, has_targets, members, soft)
    if wrong:
        raise HarnessError(f"{where}: {wrong}")
    target = item["target_hard"] if has_targets else None
    for role, image_id in [("reference", item["reference"]), ("target_hard", target)]:
        if image_id is not None and image_id not in gallery:
            raise HarnessError(f"{where}: {role} {image_id!r} is not in the split file")
    absent = [m for m in [*members, *soft] if m not in gallery]
    if absent:
        raise HarnessError(f"{where}: img_set member / soft target {absent[0]!r} is not in the split file")
    query = Query(
        pair_id=pair_id,
        reference=item["reference"],
        caption=item["caption"],
        target=target,
        target_soft={k: float(v) for k, v in soft.items()},
        members=tuple(members),
    )
    return query, _protocol_problem(query)


def _wrong_types(item: dict, has_targets: bool, members, soft) -> str | None:
    if not isinstance(item["reference"], str):
        return f"reference must be an image id (a string), got {item['reference']!r:.40}"
    if not isinstance(item["caption"], str):
        return f"caption must be a string, got {item['caption']!r:.40}"
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        return "img_set must be an object whose members are a list of image ids"
    if has_targets and not isinstance(item["target_hard"], str):
        return f"target_hard must be an image id (a string), got {item['target_hard']!r:.40}"
    if not isinstance(soft, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in soft.values()
    ):
        return "target_soft must map image ids to finite numbers"
    return None


def _protocol_problem(q: Query) -> str | None:
    """What makes a query unscorable under the CIRR protocol (the reference is removed
    from its ranking; Recall_subset ranks the img_set of 6 minus the reference)."""
    if q.target is not None and q.target == q.reference:
        return "reference equals target_hard"
    if len(q.members) != IMG_SET_SIZE or len(set(q.members)) != len(q.members):
        return f"img_set does not have {IMG_SET_SIZE} distinct members"
    if q.reference not in q.members:
        return "reference not in its img_set"
    if q.target is not None and q.target not in q.members:
        return "target_hard not in its img_set"
    return None


def check_images(data: SplitData, image_ids: list[str], show: int = 5) -> None:
    """Fail before any model work if an image is missing, empty, truncated, too large
    or unreadable (harness/suites/image_files.py: headers and chunk checksums, no decoding)."""
    bad: list[str] = []
    for image_id in image_ids:
        path = data.image_paths[image_id]
        problem = image_problem(path)
        if problem is not None:
            bad.append(f"{path} ({problem})")
    if bad:
        listing = "\n  ".join(bad[:show])
        more = f"\n  ... and {len(bad) - show} more" if len(bad) > show else ""
        raise HarnessError(
            f"{len(bad)} of {len(image_ids)} images of {data.suite}/{data.split} are missing "
            f"or unreadable:\n  {listing}{more}\n{data.layout_help}"
        )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GALLERIES = ("split", "folder")  # --gallery


def folder_gallery(data: SplitData) -> SplitData:
    """The split with CoVR's val-script gallery: every image file in the split's
    folder (val: dev/, test1: test1/), not only those of the split file. CoVR's
    src/test/blip/cirr_val.py ranks val queries against the whole dev folder
    (8,102 images for real CIRR) where the official protocol has the split file's
    2,297. Order: the split file's images, then the others by file name."""
    if data.split not in IMAGE_DIRS or data.split == "train":
        raise HarnessError(f"--gallery folder is defined for the val and test1 splits, not {data.split!r}")
    folder = Path(data.provenance["root"]) / IMAGE_DIRS[data.split]
    if not folder.is_dir():
        raise HarnessError(f"--gallery folder: {folder} does not exist\n{data.layout_help}")
    extra = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.stem not in data.image_paths)
    named = {}
    for path in extra:
        if path.stem in named:
            raise HarnessError(f"--gallery folder: {named[path.stem].name} and {path.name} in {folder} share the id "
                               f"{path.stem!r}")
        named[path.stem] = path
    listing = "\n".join(sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
    return replace(data, gallery=[*data.gallery, *named], image_paths={**data.image_paths, **named},
                   provenance={**data.provenance, "gallery": f"folder {IMAGE_DIRS[data.split]}/",
                               "gallery_listing_sha256": hashlib.sha256(listing.encode()).hexdigest()})
