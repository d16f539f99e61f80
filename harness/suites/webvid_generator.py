"""Seeded generator of a small dataset in the WebVid-CoVR layout, so the
`webvid-covr` suite, its tests and offline demos run without WebVid.

A clip is a `shapes` scene (harness/suites/scenes.py) in motion: the picture pans
left and right over the clip (the middle frame is the scene at rest, as the query
frame of CoVR's protocol is the middle one). A reference clip gets the five edits
`plan_edits` gives (two or three of them the same edit with another value, so the
image alone cannot tell the targets apart); each edit is one query whose target is
the edited scene's clip, with its own phase of motion. Per-frame scores for the
`query` pooling favour the frames near the middle.

    root/annotation/webvid-covr/webvid2m-covr_train.csv, webvid8m-covr_val.csv, webvid8m-covr_test.csv
        columns pth1, pth2, edit, scores, txt1, txt2 (as CoVR's files)
    root/WebVid/2M/train/<folder>/<id>.mp4     train clips
    root/WebVid/8M/train/<folder>/<id>.mp4     val and test clips
    root/manifest.json
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from harness.core.progress import progress
from harness.suites.generated import write_dataset
from harness.suites.scenes import (
    BACKGROUND,
    apply_edit,
    base_scene,
    caption_for,
    plan_edits,
    render_scene,
)
from harness.suites.video_files import sampled_frames, write_clip

GENERATOR_VERSION = 1
FILES = {"train": ("webvid2m-covr_train.csv", "WebVid/2M/train"),
         "val": ("webvid8m-covr_val.csv", "WebVid/8M/train"),
         "test": ("webvid8m-covr_test.csv", "WebVid/8M/train")}
SPLIT_NUMBER = {"train": 1, "val": 2, "test": 3}  # keeps video ids distinct across splits


@dataclass(frozen=True)
class WebVidSpec:
    seed: int = 0
    image_size: int = 64
    frames: int = 24  # per clip
    target_frames: int = 3  # sampled per target video (CoVR: 15 of a real video)
    pan: int = 6  # pixels of motion either way
    references: dict = field(default_factory=lambda: {"train": 2000, "val": 30, "test": 60})


def describe(spec: WebVidSpec) -> dict:
    return {"generator": "webvid_generator", "generator_version": GENERATOR_VERSION, "seed": spec.seed,
            "image_size": spec.image_size, "frames": spec.frames, "target_frames": spec.target_frames,
            "pan": spec.pan, "references": dict(spec.references)}


def clip_frames(scene, spec: WebVidSpec, phase: float) -> list[Image.Image]:
    """The scene panning: frame t shifted by pan * sin(2 pi (t - middle) / frames + phase)."""
    still = render_scene(scene, spec.image_size)
    middle = spec.frames // 2
    out = []
    for t in range(spec.frames):
        shift = round(spec.pan * math.sin(2 * math.pi * (t - middle) / spec.frames + phase))
        frame = Image.new("RGB", still.size, BACKGROUND)
        frame.paste(still, (shift, 0))
        out.append(frame)
    return out


def _scores(spec: WebVidSpec, rng: random.Random) -> list[float]:
    """One score per sampled target frame, highest near the middle (like CLIP scores
    of frames against the target's caption)."""
    indices = sampled_frames(spec.target_frames, spec.frames)
    middle = spec.frames // 2
    return [round(0.3 - 0.01 * abs(i - middle) + 0.005 * rng.random(), 4) for i in indices]


def short_texts(edit, scene, target, rng: random.Random) -> dict[str, str]:
    """The row's texts: WebVid-CoVR's short edit caption, no descriptions."""
    return {"edit": caption_for(edit, scene, rng), "txt1": "", "txt2": ""}


def _write_split(tmp: Path, spec: WebVidSpec, split: str, texts: Callable = short_texts) -> int:
    csv_name, video_dir = FILES[split]
    rng = random.Random(f"webvid:{spec.seed}:{split}")
    rows = []
    for ref in progress(range(spec.references[split]), desc=f"webvid-covr {split} clips", unit="set"):
        folder = f"{SPLIT_NUMBER[split]}{ref // 1000:03d}"
        scene = base_scene(rng)
        reference = f"{folder}/{SPLIT_NUMBER[split]}{ref:06d}0"
        write_clip(tmp / video_dir / f"{reference}.mp4", clip_frames(scene, spec, 0.0))
        for k, edit in enumerate(plan_edits(scene, rng)):
            target = f"{folder}/{SPLIT_NUMBER[split]}{ref:06d}{k + 1}"
            write_clip(tmp / video_dir / f"{target}.mp4", clip_frames(apply_edit(scene, edit), spec,
                                                                      rng.uniform(-1.0, 1.0)))
            rows.append({"pth1": reference, "pth2": target, **texts(edit, scene, apply_edit(scene, edit), rng),
                         "scores": str(_scores(spec, rng))})
    path = tmp / "annotation" / "webvid-covr" / csv_name
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["pth1", "pth2", "edit", "scores", "txt1", "txt2"])
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def generate(root: Path, spec: WebVidSpec, texts: Callable = short_texts, identity: dict | None = None) -> dict:
    """Write the dataset to `root` atomically and return its manifest; `texts` makes each
    row's edit and descriptions (Dense-WebVid-CoVR's stand-in passes long ones, and its
    own `identity` for the manifest)."""
    return write_dataset(root, identity or describe(spec), lambda tmp: {
        "queries": {split: _write_split(tmp, spec, split, texts) for split in spec.references}})
