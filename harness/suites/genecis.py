"""GeneCIS (Vaze et al., CVPR 2023), conditional image similarity, read from --data-root
in the layout GeneCIS's config.py names (harness/suites/genecis_layout.py), or a
generated stand-in (harness/suites/genecis_generator.py) without one.

The four tasks are the suite's splits (`focus_attribute`, `change_attribute`,
`focus_object`, `change_object`: one file, one protocol, as evaluate.py takes them by
`--dataset`), and `all` (the default) is the four together, so that one run gives each
task's Recall@{1,2,3} and their average, the figure GeneCIS reports (DOWNLOAD.md,
"GeneCIS Avg. Recall @ 1"). Splits rather than sub-suites: the tasks share a layout,
a reader and a protocol and differ only in the file read, which is what a split is here.

A template is one query: the reference image (for attribute tasks, its crop around
the box), the condition as the query text (vaw_dataset.py line 98, coco_dataset.py
line 54: fed to the tokenizer as it is) and its own gallery, the target and the
template's gallery images (`SplitData.candidates["gallery"]`, positions in one pool
of every distinct image of the split, embedded once). GeneCIS's code places the target
first among them ("By construction, target_rank = 0", vaw_dataset.py lines 105-113,
coco_dataset.py lines 61-69) and ranks the reference nowhere (eval_functions.py
lines 83-126 mask nothing): `--reference keep` is this suite's default. A candidate
list is a set: the one real change_object template whose gallery also lists its
target counts that image once (GeneCIS's code ranks the copy as a distractor with the
target's own score); the provenance counts such templates.

Attribute crops are cut once into $COIR_BENCH_CACHE/genecis-crops (PNG, keyed by the
source file's path, size, modification time and the box); every source image of the
split is checked up front, and one error lists every missing or unreadable one.

GeneCIS is zero-shot (there is no train split). A fine-tuning run on the generated set
(blip-tiny's default) trains on the `shapes` dataset written beside it
(zero_shot_train/), as CIRCO's and EgoCVR's do; with the real data, evaluate a
checkpoint trained elsewhere (--checkpoint DIR --no-train).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from harness.core.errors import HarnessError
from harness.core.paths import cache_dir
from harness.core.progress import progress
from harness.suites import genecis_generator
from harness.suites.base import Query, SplitData, register_suite
from harness.suites.genecis_layout import (
    ANNOTATION_DIR,
    COCO_DIR,
    TASKS,
    VG_DIR,
    Picture,
    cropped,
    image_file,
    read_task,
)
from harness.suites.generated import default_root, ensure_generated
from harness.suites.image_files import READ_ERRORS, open_rgb
from harness.suites.shapes import ShapesSuite

READER_VERSION = 1
ALL = "all"
SHOWN = 10
NO_TRAIN_SPLIT = ("GeneCIS has no train split (it is evaluated zero-shot). Evaluate a checkpoint trained elsewhere "
                  "(--checkpoint DIR --no-train), or run without --data-root to fine-tune on the shapes set "
                  f"generated beside the stand-in ({genecis_generator.TRAIN_DIR}/).")
LAYOUT = f"""Expected layout (GeneCIS, github.com/facebookresearch/genecis, config.py):
  {{root}}/{ANNOTATION_DIR}/<task>.json   tasks: {', '.join(TASKS)}
  {{root}}/{COCO_DIR}/<12-digit id>.jpg   (COCO 2017 val: object tasks)
  {{root}}/{VG_DIR}/<image_id>.jpg         (Visual Genome 1.2: attribute tasks)"""


def _crop_path(cache: Path, source: Path, box: tuple[float, ...]) -> Path:
    stat = source.stat()
    key = f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{list(box)}"
    return cache / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.png"


def image_paths_of(root: Path, pictures: dict[str, Picture], help_text: str) -> dict[str, Path]:
    """Each picture's file: a COCO image itself, a VG crop cut into the crop cache once;
    every missing or unreadable source, or a box outside its image, in one error."""
    cache = cache_dir() / "genecis-crops"
    paths, problems = {}, []
    for item, picture in progress(list(pictures.items()), desc="checking genecis images", unit="image"):
        source = image_file(root, picture)
        if picture.box is None:
            paths[item] = source
            continue
        try:
            if not source.is_file():
                raise ValueError("missing")
            path = _crop_path(cache, source, picture.box)
            if not path.is_file():
                crop = cropped(open_rgb(source), picture.box)
                cache.mkdir(parents=True, exist_ok=True)
                partial = path.with_suffix(".tmp.png")
                crop.save(partial)
                partial.replace(path)
            paths[item] = path
        except (*READ_ERRORS, ValueError) as err:
            problems.append(f"{source} (box {list(picture.box)}): {err}")
    if problems:
        shown = "\n  ".join(problems[:SHOWN]) + (f"\n  ... and {len(problems) - SHOWN} more"
                                                   if len(problems) > SHOWN else "")
        raise HarnessError(f"{len(problems)} of {len(pictures)} GeneCIS images cannot be used:\n  {shown}\n{help_text}")
    return paths


def read_genecis(root: Path, split: str, suite: str) -> SplitData:
    help_text = LAYOUT.format(root=root)
    tasks = TASKS if split == ALL else (split,)
    files = {task: root / ANNOTATION_DIR / f"{task}.json" for task in tasks}
    templates = {task: read_task(path, task) for task, path in files.items()}
    pictures: dict[str, Picture] = {}
    for per_task in templates.values():
        for t in per_task:
            for picture in (t.reference, t.target, *t.gallery):
                pictures.setdefault(picture.item, picture)
    pool = list(dict.fromkeys(p.item for ts in templates.values() for t in ts for p in (t.target, *t.gallery)))
    position = {item: i for i, item in enumerate(pool)}
    queries, candidates = [], []
    for task, per_task in templates.items():
        for t in per_task:
            queries.append(Query(len(queries), t.reference.item, t.condition, t.target.item, group=task))
            candidates.append([position[p.item] for p in (t.target, *t.gallery)])
    provenance = {
        "root": str(root),
        "gallery": "each template's own: its target and gallery images (GeneCIS JSON)",
        "reader_version": READER_VERSION,
        "annotation_files": {task: str(path) for task, path in files.items()},
        "caption_sha256": hashlib.sha256(b"".join(p.read_bytes() for p in files.values())).hexdigest(),
        "split_sha256": hashlib.sha256(json.dumps(pool).encode()).hexdigest(),  # the pool: the cache key
        "queries_per_task": {task: len(ts) for task, ts in templates.items()},
        "templates_listing_their_target_in_the_gallery": sum(
            t.target in t.gallery for ts in templates.values() for t in ts),
        "crop": "vaw_dataset.py: dilation 0.7 (left/top), padded to a black square",
    }
    return SplitData(suite, split, queries, pool, image_paths_of(root, pictures, help_text), True, help_text,
                     provenance, candidates={"gallery": [np.asarray(c, dtype=np.int64) for c in candidates]})


@register_suite("genecis")
class GeneCISSuite:
    name = "genecis"
    splits = (ALL, *TASKS)
    default_split = ALL
    scoring = "genecis"  # harness/evaluation/protocols/genecis.py
    default_reference = "keep"  # GeneCIS's code ranks the template's gallery and masks nothing

    def __init__(self, data_root: Path | None = None):
        self.manifest: dict | None = None
        if data_root is None:
            spec = genecis_generator.GeneCISSpec()
            self.root = default_root("genecis", genecis_generator.describe(spec))
            self.manifest = ensure_generated(self.root, "genecis", lambda: genecis_generator.generate(self.root, spec))
            return
        self.root = Path(data_root)
        if not self.root.is_dir():
            raise HarnessError(f"--data-root {data_root} does not exist.\n" + LAYOUT.format(root=data_root))
        if (self.root / "manifest.json").is_file():  # a generated set given by path
            self.manifest = json.loads((self.root / "manifest.json").read_text())

    def load(self, split: str) -> SplitData:
        if split not in self.splits:
            raise HarnessError(f"genecis has the splits {', '.join(self.splits)} (the four tasks, or all of them), "
                               f"not {split!r}. {NO_TRAIN_SPLIT if split == 'train' else ''}".rstrip())
        data = read_genecis(self.root, split, self.name)
        if self.manifest is not None:
            data.provenance["manifest"] = self.manifest
        return data

    def load_training(self, split: str) -> SplitData:
        """The data a run fine-tunes on: the shapes dataset beside a generated GeneCIS."""
        train_root = self.root / genecis_generator.TRAIN_DIR
        if not (train_root / "manifest.json").is_file():
            raise HarnessError(NO_TRAIN_SPLIT)
        return ShapesSuite(train_root).load(split)
