"""EgoCVR (Hummel et al., ECCV 2024), composed video retrieval on Ego4D clips, read from
--data-root in EgoCVR's repository layout (harness/suites/egocvr_layout.py), or a
generated stand-in (harness/suites/egocvr_generator.py) without one.

A query is a clip of an Ego4D video and an instruction; its targets are one or more
clips of the same video (target_clip_ids; 287 of the real file's 2,295 queries have
several distinct ones: 289 rows list several ids, 2 of them one clip twice). The
pool is every distinct clip of egocvr_data.csv, embedded once; the protocol
(harness/evaluation/protocols/egocvr.py) ranks each query within two per-query
galleries drawn from it (`SplitData.candidates`):

- with <root>/annotation/egocvr/egocvr_annotations_gallery.csv (EgoCVR's separate
  download, README "Downloading the EgoCVR Gallery Information"): its `global_idx`
  and `local_idx` row lists, rows of egocvr_data.csv mapped to their clips (a clip
  listed in several rows is one candidate; EgoCVR's code ranks each row, so a
  distractor in k rows takes k places there: none of them is a query or target clip);
- without it, derived: `global` is the whole pool, `local` every pool clip of the
  query's video (the `<video_uid>` of its clip id). Both hold the query clip, ranked
  as EgoCVR's code ranks a listed clip (`--reference keep`, this suite's default: 17
  real queries list their own clip as a target) or taken out (`remove`). These are
  not EgoCVR's lists: a benchmark summary (alphaxiv.org, EgoCVR page; not the paper's
  text, which could not be read here) gives 10,661-12,526 global and about 6.4 local
  clips per query, while the derived local lists hold 21.0 on the real pool. Numbers
  from them are not comparable with the paper's; the protocol block says which lists
  were used.

Video handling is WebVid-CoVR's (harness/suites/webvid_covr.py): PyAV, each clip
decoded once into the frame cache, every clip checked up front (one error listing
every missing, unreadable or empty one). The query image is the query clip's middle
frame (EgoCVR's BLIP-CoVR averages the composed embeddings of 15 query frames,
model/models.py lines 39-50: recorded in the protocol block); a clip's embedding is
the mean of TARGET_FRAMES frames spread over it, normalised (egocvr_retrieval.py
lines 446-448 and 229-233, 15 frames). The query text is the instruction (the
README's BLIP_CoVR command, `--text instruction`).

EgoCVR has no train split: it is zero-shot. A fine-tuning run on the generated set
(blip-tiny's default) trains on the `shapes` dataset written beside it
(zero_shot_train/), as CIRCO's does; with the real data, evaluate a checkpoint
trained elsewhere (--checkpoint DIR --no-train).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from harness.core.errors import HarnessError
from harness.suites import egocvr_generator
from harness.suites.base import Query, SplitData, register_suite
from harness.suites.egocvr_layout import (
    ANNOTATION_DIR,
    ANNOTATIONS,
    CLIP_DIR,
    GALLERY,
    POOL,
    QueryRow,
    parse_clip_id,
    read_gallery_lists,
    read_pool,
    read_queries,
)
from harness.suites.generated import default_root, ensure_generated
from harness.suites.shapes import ShapesSuite
from harness.suites.video_files import sampled_frames
from harness.suites.webvid_covr import _count_all, _save_all

TARGET_FRAMES = 15  # egocvr_retrieval.py --target_frames (line 74)
READER_VERSION = 1
DEFAULT_SPEC = egocvr_generator.EgoCVRSpec()
NO_TRAIN_SPLIT = ("EgoCVR has no train split (it is evaluated zero-shot). Evaluate a checkpoint trained elsewhere "
                  "(--checkpoint DIR --no-train), or run without --data-root to fine-tune on the shapes set "
                  f"generated beside the stand-in ({egocvr_generator.TRAIN_DIR}/).")

LAYOUT = f"""Expected layout (EgoCVR, github.com/ExplainableML/EgoCVR):
  {{root}}/{ANNOTATION_DIR}/{ANNOTATIONS}, {POOL}
  {{root}}/{ANNOTATION_DIR}/{GALLERY}   (optional: the official gallery lists)
  {{root}}/{CLIP_DIR}/<video_uid>/<clip id>.mp4"""


def _check_known(rows: list[QueryRow], pool: set[str], path: Path) -> None:
    for row in rows:
        unknown = [c for c in (row.clip, *row.targets) if c not in pool]
        if unknown:
            raise HarnessError(f"{path}, line {row.line}: clip {unknown[0]} is not in the pool ({POOL})")


def galleries(root: Path, rows: list[QueryRow], clips: list[str], row_clip: list[int]
              ) -> tuple[dict[str, list[np.ndarray | None]], str]:
    """Each query's global and local candidates (positions in `clips`), and how they were made."""
    path = root / ANNOTATION_DIR / GALLERY
    if path.is_file():
        lists = read_gallery_lists(path, rows, len(row_clip))
        to_clip = np.asarray(row_clip, dtype=np.int64)
        return ({setting: [np.unique(to_clip[np.asarray(r, dtype=np.int64)]) for r in per_query]
                 for setting, per_query in lists.items()}, f"{GALLERY} (global_idx, local_idx)")
    by_video: dict[str, list[int]] = {}
    for position, clip in enumerate(clips):
        by_video.setdefault(parse_clip_id(clip).video, []).append(position)
    local = [np.asarray(by_video[parse_clip_id(r.clip).video], dtype=np.int64) for r in rows]
    return {"global": [None] * len(rows), "local": local}, (
        f"derived ({GALLERY} absent): global = every pool clip, local = the pool clips of the query's video")


def read_egocvr(root: Path, split: str, suite: str, target_frames: int = TARGET_FRAMES) -> SplitData:
    help_text = LAYOUT.format(root=root)
    annotation = root / ANNOTATION_DIR / ANNOTATIONS
    rows = read_queries(annotation)
    clips, row_clip = read_pool(root / ANNOTATION_DIR / POOL)
    _check_known(rows, set(clips), annotation)
    candidates, made = galleries(root, rows, clips, row_clip)
    videos = root / CLIP_DIR
    keys = {clip: f"{parse_clip_id(clip).video}/{clip}" for clip in clips}
    folders, lengths = _count_all(videos, list(keys.values()), help_text)
    image_paths, wanted = {}, {key: set() for key in keys.values()}

    def frame(clip: str, index: int) -> str:
        frame_id = f"{clip}#{index}"
        image_paths[frame_id] = folders[keys[clip]] / f"{index}.png"
        wanted[keys[clip]].add(index)
        return frame_id

    frames = {}
    for clip in clips:
        indices = sampled_frames(target_frames, lengths[keys[clip]])
        frames[clip] = tuple((frame(clip, i), 1.0 / len(indices)) for i in indices)
    queries = [Query(i, frame(r.clip, lengths[keys[r.clip]] // 2), r.instruction, r.targets[0],
                     ground_truths=r.targets if len(r.targets) > 1 else (), reference_item=r.clip)
               for i, r in enumerate(rows)]
    _save_all(videos, folders, wanted, help_text)
    provenance = {
        "root": str(root),
        # the fingerprint's gallery field: which lists the settings rank
        "gallery": f"the pool (every distinct clip of {POOL}); per-query global and local lists: {made}",
        "galleries": made,
        "reader_version": READER_VERSION,
        "annotation_file": str(annotation),
        "caption_sha256": _sha256(annotation),
        "split_sha256": _sha256(root / ANNOTATION_DIR / POOL),  # the pool: part of the embedding-cache key
        "gallery_lists_sha256": _sha256(root / ANNOTATION_DIR / GALLERY),
        "queries_with_several_targets": sum(len(r.targets) > 1 for r in rows),
        "queries_targeting_their_own_clip": sum(r.clip in r.targets for r in rows),
        "video": {"query_frame": "middle", "query_text": "instruction", "pooling": "mean",
                  "target_frames": target_frames,
                  "egocvr_code": "BLIP-CoVR: composed query averaged over 15 query frames, targets over 15"},
    }
    return SplitData(suite, split, queries, clips, image_paths, True, help_text, provenance, frames=frames,
                     candidates=candidates)


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


@register_suite("egocvr")
class EgoCVRSuite:
    name = "egocvr"
    splits = ("test",)
    default_split = "test"
    scoring = "egocvr"  # harness/evaluation/protocols/egocvr.py
    default_reference = "keep"  # EgoCVR's code removes nothing from its lists (the protocol's docstring)

    def __init__(self, data_root: Path | None = None):
        self.manifest: dict | None = None
        self.target_frames = TARGET_FRAMES
        if data_root is None:
            self.root = default_root("egocvr", egocvr_generator.describe(DEFAULT_SPEC))
            self.manifest = ensure_generated(self.root, "egocvr",
                                             lambda: egocvr_generator.generate(self.root, DEFAULT_SPEC))
        else:
            self.root = Path(data_root)
            if not self.root.is_dir():
                raise HarnessError(f"--data-root {data_root} does not exist.\n" + LAYOUT.format(root=data_root))
            if (self.root / "manifest.json").is_file():  # a generated set given by path
                self.manifest = json.loads((self.root / "manifest.json").read_text())
        if self.manifest is not None:
            self.target_frames = int(self.manifest["target_frames"])

    def load(self, split: str) -> SplitData:
        if split not in self.splits:
            raise HarnessError(f"egocvr has the split test only, not {split!r}. {NO_TRAIN_SPLIT}")
        data = read_egocvr(self.root, split, self.name, self.target_frames)
        if self.manifest is not None:
            data.provenance["manifest"] = self.manifest
        return data

    def load_training(self, split: str) -> SplitData:
        """The data a run fine-tunes on: the shapes dataset beside a generated EgoCVR."""
        train_root = self.root / egocvr_generator.TRAIN_DIR
        if not (train_root / "manifest.json").is_file():
            raise HarnessError(NO_TRAIN_SPLIT)
        return ShapesSuite(train_root).load(split)
