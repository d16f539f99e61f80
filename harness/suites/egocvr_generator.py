"""Seeded generator of a small dataset in EgoCVR's layout (harness/suites/egocvr_layout.py),
so the `egocvr` suite, its tests and offline demos run without Ego4D.

A "video" is a `shapes` scene (harness/suites/scenes.py) with a UUID; its clips are
the scene and five edits of it (`plan_edits`), each panning as WebVid-CoVR's
generated clips do (harness/suites/webvid_generator.py `clip_frames`), with ids
`<uuid>_<start>_<end>` at 10-second steps. Each edit is one query from the base clip
(so a clip is the query of several queries, as in EgoCVR); every third video adds a
second clip of its first edit's scene (another phase of motion), which becomes a
second target of that query. Distractor videos add clips only to the pool, and one
distractor is listed twice in egocvr_data.csv, as 1,390 distractors are in the real
file. The gallery file lists, for every query, every pool row (`global_idx`) and the
rows of its own video (`local_idx`): the query clip is in both lists, as in the
derived lists (harness/suites/egocvr.py).

    root/annotation/egocvr/egocvr_annotations.csv, egocvr_data.csv, egocvr_annotations_gallery.csv
    root/data/egocvr_clips/<uuid>/<clip id>.mp4
    root/zero_shot_train/   a `shapes` dataset to fine-tune on (EgoCVR has no train split)
    root/manifest.json
"""

from __future__ import annotations

import csv
import json
import random
import uuid
from dataclasses import dataclass
from pathlib import Path

from harness.core.progress import progress
from harness.suites import shapes_generator
from harness.suites.egocvr_layout import ANNOTATION_DIR, ANNOTATIONS, CLIP_DIR, GALLERY, POOL
from harness.suites.generated import write_dataset
from harness.suites.scenes import apply_edit, base_scene, caption_for, plan_edits
from harness.suites.video_files import write_clip
from harness.suites.webvid_generator import WebVidSpec, clip_frames

GENERATOR_VERSION = 1
TRAIN_DIR = "zero_shot_train"
QUERY_COLUMNS = ["video_clip_id", "target_clip_ids", "video_clip_narration", "target_clip_narration",
                 "instruction", "modified_captions"]


@dataclass(frozen=True)
class EgoCVRSpec:
    seed: int = 0
    image_size: int = 64
    frames: int = 24  # per clip
    target_frames: int = 3  # sampled per clip (EgoCVR: 15)
    videos: int = 24  # videos with queries (5 queries each)
    distractor_videos: int = 8  # 3 clips each, in the pool only
    train_sets: int = 3000  # shapes image sets in zero_shot_train/ (5 queries each); 0 for none


def describe(spec: EgoCVRSpec) -> dict:
    return {"generator": "egocvr_generator", "generator_version": GENERATOR_VERSION, "seed": spec.seed,
            "image_size": spec.image_size, "frames": spec.frames, "target_frames": spec.target_frames,
            "videos": spec.videos, "distractor_videos": spec.distractor_videos, "train_sets": spec.train_sets}


class _Writer:
    """Clips written under the clip folder, and the pool's rows in order."""

    def __init__(self, tmp: Path, spec: EgoCVRSpec):
        self.tmp, self.spec = tmp, spec
        self.motion = WebVidSpec(image_size=spec.image_size, frames=spec.frames)
        self.pool: list[dict] = []

    def clip(self, video: str, index: int, scene, phase: float, narration: str) -> str:
        clip_id = f"{video}_{10 * index}_{10 * index + 9}"
        write_clip(self.tmp / CLIP_DIR / video / f"{clip_id}.mp4", clip_frames(scene, self.motion, phase))
        self.pool.append({"clip_name": clip_id, "narration_text": narration, "video_uid": video})
        return clip_id


def _write(tmp: Path, spec: EgoCVRSpec) -> dict:
    rng = random.Random(f"egocvr:{spec.seed}")
    writer = _Writer(tmp, spec)
    queries = []
    for number in progress(range(spec.videos), desc="egocvr clips", unit="video"):
        queries += _queries_of_video(writer, rng, number)
    for _ in range(spec.distractor_videos):
        video = str(uuid.UUID(int=rng.getrandbits(128)))
        scene = base_scene(rng)
        for index, edit in enumerate(plan_edits(scene, rng)[:3]):
            writer.clip(video, index, apply_edit(scene, edit), rng.uniform(-1.0, 1.0), "#C C moves around")
    if spec.distractor_videos:
        writer.pool.append(dict(writer.pool[-1]))  # a distractor listed twice, as in the real file
    folder = tmp / ANNOTATION_DIR
    folder.mkdir(parents=True, exist_ok=True)
    _write_csv(folder / POOL, ["clip_name", "narration_text", "video_uid"], writer.pool)
    _write_csv(folder / ANNOTATIONS, QUERY_COLUMNS, [_annotation(q) for q in queries])
    rows_of_video: dict[str, list[int]] = {}
    for row, entry in enumerate(writer.pool):
        rows_of_video.setdefault(entry["video_uid"], []).append(row)
    every_row = list(range(len(writer.pool)))
    _write_csv(folder / GALLERY, [*QUERY_COLUMNS, "global_idx", "local_idx"], [
        {**_annotation(q), "global_idx": json.dumps(every_row),
         "local_idx": json.dumps(rows_of_video[q["video_clip_id"].rsplit("_", 2)[0]])} for q in queries])
    if spec.train_sets:
        shapes_generator.generate(tmp / TRAIN_DIR, shapes_generator.ShapesSpec(
            seed=spec.seed, image_size=spec.image_size, sets={"train": spec.train_sets},
            queries_per_set={"train": 5}))
    return {"queries": len(queries), "pool_rows": len(writer.pool), "target_frames": spec.target_frames}


def _queries_of_video(writer: _Writer, rng: random.Random, number: int) -> list[dict]:
    video = str(uuid.UUID(int=rng.getrandbits(128)))
    scene = base_scene(rng)
    query = writer.clip(video, 0, scene, 0.0, "#C C looks at the scene")
    edits = plan_edits(scene, rng)
    queries = []
    for k, edit in enumerate(edits, start=1):
        instruction = caption_for(edit, scene, rng)
        target = writer.clip(video, k, apply_edit(scene, edit), rng.uniform(-1.0, 1.0), f"#C C {instruction}")
        queries.append({"video_clip_id": query, "targets": [target], "instruction": instruction})
    if number % 3 == 0:  # the first edit's scene again, in another phase: a second target of that query
        again = writer.clip(video, len(edits) + 1, apply_edit(scene, edits[0]), rng.uniform(-1.0, 1.0),
                            f"#C C {queries[0]['instruction']}")
        queries[0]["targets"].append(again)
    return queries


def _annotation(query: dict) -> dict:
    return {"video_clip_id": query["video_clip_id"], "target_clip_ids": str(query["targets"]),
            "video_clip_narration": "#C C looks at the scene", "target_clip_narration": "",
            "instruction": query["instruction"], "modified_captions": ""}


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def generate(root: Path, spec: EgoCVRSpec) -> dict:
    """Write the dataset to `root` atomically and return its manifest."""
    return write_dataset(root, describe(spec), lambda tmp: _write(tmp, spec))
