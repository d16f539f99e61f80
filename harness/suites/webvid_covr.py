"""WebVid-CoVR (Ventura et al., AAAI 2024), composed video retrieval, read from
--data-root in CoVR's layout, or a generated stand-in (harness/suites/webvid_generator.py)
without one.

    <root>/annotation/webvid-covr/webvid2m-covr_train.csv
    <root>/annotation/webvid-covr/webvid8m-covr_val.csv, webvid8m-covr_test.csv
    <root>/WebVid/2M/train/<folder>/<id>.mp4     train videos
    <root>/WebVid/8M/train/<folder>/<id>.mp4     val and test videos

A CSV row is one query: `pth1` (the reference video, "folder/id"), `edit` (the
modification text), `pth2` (the target video), `scores` (optional: one score per
sampled target frame, a Python list). The protocol, as CoVR's code runs it
(src/data/webvid_covr.py, src/test/blip/webvid_covr.py):
- the query is one frame of the reference video (`--video-query-frame`: `middle`,
  CoVR's default, or `random`, seeded by the pair id) with the cleaned edit text;
- a target video's embedding pools the embeddings of TARGET_FRAMES frames spread
  over it (`--video-pooling`: `middle` frame, `mean`, or `query`, CoVR's default,
  weights softmax(scores / 0.1) from the annotation; uniform without scores);
- the gallery is the split's target videos (one per row in val and test); a
  gallery video equal to the query's own reference is removed from its ranking;
- R@1, R@5, R@10, R@50, meanR3 and meanR4 (harness/evaluation/protocols/webvid.py).

Every video a split uses is decoded once, up front, into the frame cache
($COIR_BENCH_CACHE/webvid-frames); any that is missing, unreadable or empty stops
the run with one error listing them (CoVR would use a black frame).
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from harness.core.errors import HarnessError
from harness.core.paths import cache_dir
from harness.core.progress import progress
from harness.suites import webvid_generator
from harness.suites.base import Query, SplitData, register_suite
from harness.suites.generated import default_root, ensure_generated
from harness.suites.video_files import frame_count, sampled_frames, save_frames

ANNOTATIONS = {"train": "webvid2m-covr_train.csv", "val": "webvid8m-covr_val.csv",
               "test": "webvid8m-covr_test.csv"}
VIDEO_DIRS = {"train": "WebVid/2M/train", "val": "WebVid/8M/train", "test": "WebVid/8M/train"}
TARGET_FRAMES = 15  # CoVR embeds 15 frames per video (tools/embs/save_blip_embs_vids.py)
QUERY_FRAMES = ("middle", "random")
POOLINGS = ("query", "mean", "middle")
SCORE_TEMPERATURE = 0.1
READER_VERSION = 1
SHOWN = 10

LAYOUT = """Expected layout (WebVid-CoVR, as CoVR's configs):
  {root}/annotation/webvid-covr/{train}, {val}, {test}
  {root}/WebVid/2M/train/<folder>/<id>.mp4   (train videos)
  {root}/WebVid/8M/train/<folder>/<id>.mp4   (val and test videos)
  annotations: https://huggingface.co/datasets/lucas-ventura/WebVid-CoVR ; videos: WebVid"""


@dataclass(frozen=True)
class Row:
    line: int
    pair_id: int
    reference: str
    edit: str
    target: str
    scores: tuple[float, ...]


def read_rows(path: Path) -> list[Row]:
    """The CSV's queries; an error names the file and line of the first bad row."""
    if not path.is_file():
        raise HarnessError(f"annotation file {path} is missing")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in ("pth1", "pth2", "edit") if c not in (reader.fieldnames or [])]
        if missing:
            raise HarnessError(f"{path}: no column {', '.join(missing)} (columns: {reader.fieldnames})")
        rows = []
        for number, entry in enumerate(reader):
            line = number + 2  # the header is line 1
            rows.append(_row(entry, path, line, number))
    if not rows:
        raise HarnessError(f"{path} holds no rows")
    return rows


def _row(entry: dict, path: Path, line: int, number: int) -> Row:
    where = f"{path}, line {line}"
    if None in entry or any(v is None for v in entry.values()):
        raise HarnessError(f"{where}: the row has a different number of fields than the header")
    reference, target, edit = (entry[c].strip() for c in ("pth1", "pth2", "edit"))
    for name, value in (("pth1", reference), ("pth2", target)):
        if value.count("/") != 1 or not all(value.split("/")):
            raise HarnessError(f"{where}: {name} must be \"folder/id\", got {value!r}")
    if not edit:
        raise HarnessError(f"{where}: the edit text is empty")
    scores: tuple[float, ...] = ()
    text = (entry.get("scores") or "").strip()
    if text:
        try:
            parsed = ast.literal_eval(text)
            scores = tuple(float(s) for s in parsed)
        except (ValueError, SyntaxError, TypeError) as err:
            raise HarnessError(f"{where}: scores must be a list of numbers, got {text[:60]!r} ({err})") from err
        if not all(math.isfinite(s) for s in scores):
            raise HarnessError(f"{where}: scores hold a non-finite value")
    return Row(line, number, reference, edit, target, scores)


def pooling_weights(pooling: str, frames: int, scores: tuple[float, ...], where: str) -> list[float]:
    """Weights of a target video's sampled frames (they sum to 1)."""
    if pooling == "middle":
        return [1.0 if i == frames // 2 else 0.0 for i in range(frames)]
    if pooling == "mean" or not scores:
        return [1.0 / frames] * frames
    if len(scores) != frames:
        raise HarnessError(f"{where}: {len(scores)} scores for the {frames} frames sampled from the target video")
    top = max(scores)
    exps = [math.exp((s - top) / SCORE_TEMPERATURE) for s in scores]
    return [e / sum(exps) for e in exps]


@dataclass(frozen=True)
class VideoOptions:
    query_frame: str = "middle"
    pooling: str = "query"
    target_frames: int = TARGET_FRAMES

    def check(self) -> None:
        if self.query_frame not in QUERY_FRAMES:
            raise HarnessError(f"--video-query-frame must be one of {', '.join(QUERY_FRAMES)}")
        if self.pooling not in POOLINGS:
            raise HarnessError(f"--video-pooling must be one of {', '.join(POOLINGS)}")


def read_webvid(root: Path, split: str, suite: str, options: VideoOptions) -> SplitData:
    help_text = LAYOUT.format(root=root, **ANNOTATIONS)
    annotation = root / "annotation" / "webvid-covr" / ANNOTATIONS[split]
    rows = read_rows(annotation)
    videos = root / VIDEO_DIRS[split]
    needed = list(dict.fromkeys(v for r in rows for v in (r.reference, r.target)))
    folders, lengths = _count_all(videos, needed, help_text)
    image_paths: dict[str, Path] = {}
    wanted: dict[str, set[int]] = {v: set() for v in needed}

    def frame(video: str, index: int) -> str:
        frame_id = f"{video}#{index}"
        image_paths[frame_id] = folders[video] / f"{index}.png"
        wanted[video].add(index)
        return frame_id

    frames, queries = {}, []
    for r in rows:
        if r.target not in frames:
            indices = sampled_frames(options.target_frames, lengths[r.target])
            weights = pooling_weights(options.pooling, len(indices), r.scores, f"{annotation}, line {r.line}")
            frames[r.target] = tuple((frame(r.target, i), w) for i, w in zip(indices, weights) if w > 0)
        length = lengths[r.reference]
        index = length // 2 if options.query_frame == "middle" else random.Random(f"{r.pair_id}").randrange(length)
        queries.append(Query(r.pair_id, frame(r.reference, index), r.edit, r.target, reference_item=r.reference))
    _save_all(videos, folders, wanted, help_text)
    provenance = {
        "root": str(root),
        "gallery": "the split's target videos",
        "reader_version": READER_VERSION,
        "annotation_file": str(annotation),
        "caption_sha256": hashlib.sha256(annotation.read_bytes()).hexdigest(),
        "video": {"query_frame": options.query_frame, "pooling": options.pooling,
                  "target_frames": options.target_frames, "score_temperature": SCORE_TEMPERATURE},
    }
    return SplitData(suite, split, queries, list(frames), image_paths, True, help_text, provenance,
                     frames=frames)


def _count_all(videos: Path, needed: list[str], help_text: str) -> tuple[dict, dict]:
    """Every needed video counted (decoded once, then cached); all problems in one error."""
    cache = cache_dir() / "webvid-frames"
    folders, lengths, problems = {}, {}, []
    for video in progress(needed, desc="checking videos", unit="video"):
        path = videos / f"{video}.mp4"
        try:
            folders[video], lengths[video] = frame_count(cache, path)
        except (ValueError, OSError) as err:
            problems.append(f"{path}: {err}")
    _raise_if(problems, len(needed), help_text)
    return folders, lengths


def _save_all(videos: Path, folders: dict, wanted: dict[str, set[int]], help_text: str) -> None:
    problems = []
    for video, indices in progress(list(wanted.items()), desc="extracting frames", unit="video"):
        try:
            save_frames(videos / f"{video}.mp4", folders[video], indices)
        except (ValueError, OSError) as err:
            problems.append(f"{videos / f'{video}.mp4'}: {err}")
    _raise_if(problems, len(wanted), help_text)


def _raise_if(problems: list[str], total: int, help_text: str) -> None:
    if problems:
        shown = "\n  ".join(problems[:SHOWN]) + (f"\n  ... and {len(problems) - SHOWN} more"
                                                   if len(problems) > SHOWN else "")
        raise HarnessError(f"{len(problems)} of {total} videos cannot be used:\n  {shown}\n{help_text}")


@register_suite("webvid-covr")
class WebVidCoVRSuite:
    name = "webvid-covr"
    splits = ("train", "val", "test")
    default_split = "test"
    scoring = "webvid"  # harness/evaluation/protocols/webvid.py
    options = ("video_query_frame", "video_pooling")  # RunConfig fields it takes

    def __init__(self, data_root: Path | None = None, video_query_frame: str = "middle",
                 video_pooling: str = "query"):
        self.manifest: dict | None = None
        self.video = VideoOptions(video_query_frame, video_pooling)
        self.video.check()
        if data_root is None:
            spec = webvid_generator.WebVidSpec()
            self.root = default_root("webvid-covr", webvid_generator.describe(spec))
            self.manifest = ensure_generated(self.root, "webvid-covr",
                                             lambda: webvid_generator.generate(self.root, spec))
            self.video = VideoOptions(video_query_frame, video_pooling, spec.target_frames)
            return
        self.root = Path(data_root)
        if not self.root.is_dir():
            raise HarnessError(f"--data-root {data_root} does not exist.\n" + LAYOUT.format(root=data_root,
                                                                                         **ANNOTATIONS))
        generated = self.root / "manifest.json"  # a generated set given by path: its clips' sampling
        if generated.is_file():
            self.manifest = json.loads(generated.read_text())
            self.video = VideoOptions(video_query_frame, video_pooling, int(self.manifest["target_frames"]))

    def load(self, split: str) -> SplitData:
        if split not in self.splits:
            raise HarnessError(f"webvid-covr has splits {', '.join(self.splits)}, not {split!r}")
        data = read_webvid(self.root, split, self.name, self.video)
        if self.manifest is not None:
            data.provenance["manifest"] = self.manifest
        return data
