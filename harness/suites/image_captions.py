"""Generated image-caption pairs: scenes of the shapes world (harness/suites/scenes.py)
drawn with a caption of the whole scene, for contrastive pre-training of a dual
encoder (clip-tiny) and for the composers that train on images alone (Pic2Word).

Seeded and written once into the cache ($COIR_BENCH_CACHE/image-captions/<hash>):
images/<n>.png and captions.json ([{"image": "<n>", "caption": ...}]). The scenes
are drawn independently of the CoIR suites' splits, as CC3M is of CIRR's.

    data = load_pairs(ImageCaptionSpec())   # SplitData of (image, caption, image) rows
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.core.progress import progress
from harness.suites.base import Query, SplitData
from harness.suites.generated import default_root, ensure_generated, write_dataset, write_json
from harness.suites.scenes import base_scene, describe_scene, render_scene

VERSION = 1


@dataclass(frozen=True)
class ImageCaptionSpec:
    seed: int = 0
    images: int = 6000
    image_size: int = 64


DEFAULT_SPEC = ImageCaptionSpec()


def generate(root: Path, spec: ImageCaptionSpec) -> dict:
    def write(tmp: Path) -> dict:
        rng = random.Random(f"image-captions/{spec.seed}")
        rows = []
        (tmp / "images").mkdir()
        for n in progress(range(spec.images), desc="generating image-caption pairs", unit="image"):
            scene = base_scene(rng)
            render_scene(scene, spec.image_size).save(tmp / "images" / f"{n}.png")
            rows.append({"image": str(n), "caption": describe_scene(scene, rng)})
        write_json(tmp / "captions.json", rows)
        return {"pairs": len(rows)}

    return write_dataset(root, {"name": "image-captions", "version": VERSION, "spec": asdict(spec)}, write)


def root_of(spec: ImageCaptionSpec) -> Path:
    return default_root("image-captions", {"version": VERSION, **asdict(spec)})


def load_pairs(spec: ImageCaptionSpec = DEFAULT_SPEC, root: Path | None = None) -> SplitData:
    """The pairs as a split whose every query is (image, its caption, the same image)."""
    root = Path(root) if root is not None else root_of(spec)
    manifest = ensure_generated(root, "image-captions", lambda: generate(root, spec))
    rows = json.loads((root / "captions.json").read_text())
    ids = [row["image"] for row in rows]
    queries = [Query(n, row["image"], row["caption"], row["image"]) for n, row in enumerate(rows)]
    return SplitData("image-captions", "train", queries, ids, {i: root / "images" / f"{i}.png" for i in ids}, True,
                     f"generated image-caption pairs under {root}", {"manifest": manifest, "root": str(root)})
