"""Reading a dataset in the CIRR layout (real CIRR, or one written by a generator).

    <root>/captions/cap.<version>.<split>.json      queries
    <root>/image_splits/split.<version>.<split>.json {image id: "./<relative path>"}
    <root>/dev/, <root>/test1/, <root>/train/<n>/    images (the paths in the split file)

The gallery of a split is the ordered keys of its split file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from PIL import Image

from harness.errors import HarnessError
from harness.suites.base import Query, SplitData

LAYOUT = """Expected layout (CIRR):
  {root}/captions/cap.{version}.<split>.json
  {root}/image_splits/split.{version}.<split>.json
  {root}/dev/<id>.png, {root}/test1/<id>.png, {root}/train/<n>/<id>.png
  (image paths are those listed in the split file, relative to {root})"""

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
    if not isinstance(raw_queries, list):
        raise HarnessError(f"caption file {caption_file} must hold a list of queries")
    gallery = list(raw_split)
    image_paths = {image_id: (root / rel).resolve() for image_id, rel in raw_split.items()}
    has_targets = split != "test1"
    queries = [
        _parse_query(item, caption_file, has_targets, raw_split) for item in raw_queries
    ]
    seen: set[int] = set()
    for q in queries:
        if q.pair_id in seen:
            raise HarnessError(f"{caption_file}: pair id {q.pair_id} appears twice")
        seen.add(q.pair_id)
    provenance = {
        "root": str(root),
        "version": version,
        "caption_file": str(caption_file),
        "caption_sha256": _sha256(caption_file),
        "split_file": str(split_file),
        "split_sha256": _sha256(split_file),
    }
    return SplitData(suite, split, queries, gallery, image_paths, has_targets, help_text, provenance)


def _parse_query(item, caption_file: Path, has_targets: bool, gallery: dict) -> Query:
    where = f"{caption_file}, pair id {item.get('pairid', '?') if isinstance(item, dict) else '?'}"
    if not isinstance(item, dict):
        raise HarnessError(f"{caption_file}: every query must be an object, got {item!r:.80}")
    required = ["pairid", "reference", "caption", "img_set"]
    if has_targets:
        required += ["target_hard", "target_soft"]
    missing = [key for key in required if key not in item]
    if missing:
        raise HarnessError(f"{where}: missing field(s) {', '.join(missing)}")
    members = tuple(item["img_set"].get("members", ()))
    target = item.get("target_hard") if has_targets else None
    soft = {str(k): float(v) for k, v in item.get("target_soft", {}).items()} if has_targets else {}
    for role, image_id in [("reference", item["reference"]), ("target_hard", target)]:
        if image_id is not None and image_id not in gallery:
            raise HarnessError(f"{where}: {role} {image_id!r} is not in the split file")
    absent = [m for m in [*members, *soft] if m not in gallery]
    if absent:
        raise HarnessError(f"{where}: img_set member / soft target {absent[0]!r} is not in the split file")
    return Query(
        pair_id=int(item["pairid"]),
        reference=item["reference"],
        caption=str(item["caption"]),
        target=target,
        target_soft=soft,
        members=members,
    )


def check_images(data: SplitData, image_ids: list[str], show: int = 5) -> None:
    """Fail before any model work if an image is missing or its header unreadable."""
    bad: list[str] = []
    for image_id in image_ids:
        path = data.image_paths[image_id]
        try:
            with Image.open(path) as image:
                image.size  # noqa: B018  (reads the header only: cheap)
        except (OSError, SyntaxError):
            bad.append(f"{path}{'' if path.exists() else ' (missing)'}")
    if bad:
        listing = "\n  ".join(bad[:show])
        more = f"\n  ... and {len(bad) - show} more" if len(bad) > show else ""
        raise HarnessError(
            f"{len(bad)} of {len(image_ids)} images of {data.suite}/{data.split} are missing "
            f"or unreadable:\n  {listing}{more}\n{data.layout_help}"
        )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
