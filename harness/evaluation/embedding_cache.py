"""On-disk cache of a split's embeddings (safetensors), so a second evaluation of
the same weights on the same data encodes no image.

The key hashes everything the embeddings depend on: backbone, checkpoint
content (SHA-256), preprocessing, text length, precision, suite, split and the
annotation files' hashes and the suite's version (its reader and generator). A
file whose stored identity or ids do not match is never used. Files are written
to a temporary name and renamed, so an interrupted or concurrent writer never
leaves a half-written entry behind (two runs writing one entry at once each
rename a complete file; the last one stays). While an entry is being computed,
its finished batches are kept beside it (harness/evaluation/partial_embeddings.py), so an
extraction killed part-way resumes on the next run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file

from harness.core import distributed
from harness.core.atomic import replace_atomically
from harness.evaluation import partial_embeddings
from harness.evaluation.embed import SplitEmbeddings
from harness.suites.base import SplitData

CACHE_VERSION = 2
TENSORS = ("gallery", "composed", "image", "text")


def identity(backbone, data: SplitData, precision: str) -> dict:
    return {
        "cache_version": CACHE_VERSION,
        "backbone": backbone.name,
        "checkpoint_sha256": backbone.checkpoint_sha256,
        "preprocess": backbone.preprocessing.describe(),
        "max_text_len": backbone.max_text_len,
        "precision": precision,
        "suite": data.suite,
        "split": data.split,
        "caption_sha256": data.provenance.get("caption_sha256"),
        "caption_cleaning": data.provenance.get("caption_cleaning", "none"),
        "split_sha256": data.provenance.get("split_sha256"),
        "gallery": [data.provenance.get("gallery", "split file"), data.provenance.get("gallery_listing_sha256")],
        "suite_version": suite_version(data),
        **({"video": data.provenance["video"]} if data.provenance.get("video") else {}),
        # CIRCO's query text (harness/suites/circo.py), where it is not the caption
        **({"query_template": data.provenance["query_template"]} if data.provenance.get("query_template") else {}),
    }


def suite_version(data: SplitData) -> dict:
    """What of the suite's code decides its queries and images, beyond the annotation
    hashes: the version of the rules that read them, a generator's name and version."""
    manifest = data.provenance.get("manifest") or {}
    return {
        "reader": data.provenance.get("reader_version"),
        "generator": manifest.get("generator"),
        "generator_version": manifest.get("generator_version"),
        "image_size": manifest.get("image_size"),
    }


def cache_path(directory: Path, ident: dict) -> Path:
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]
    return directory / f"{ident['suite']}_{ident['split']}_{ident['backbone']}_{digest}.safetensors"


def partial_path(path: Path) -> Path:
    """The folder of an entry's finished batches while it is being computed."""
    return path.with_suffix(".partial")


def load(path: Path, ident: dict, data: SplitData) -> SplitEmbeddings | None:
    if not path.is_file():
        return None
    try:
        # One read: tensors and metadata (in the header) come from the same file even
        # if a concurrent writer renames a new entry over it meanwhile.
        raw = path.read_bytes()
        tensors = load_bytes(raw)
        header_len = int.from_bytes(raw[:8], "little")
        metadata = json.loads(raw[8 : 8 + header_len])["__metadata__"]
    except (SafetensorError, OSError, ValueError, KeyError):
        return None  # damaged or foreign: recompute (and overwrite)
    if json.loads(metadata["identity"]) != json.loads(json.dumps(ident)):
        return None
    if json.loads(metadata["gallery_ids"]) != list(data.gallery):
        return None
    if json.loads(metadata["pair_ids"]) != [q.pair_id for q in data.queries]:
        return None
    timings = json.loads(metadata["timings"])
    return SplitEmbeddings(
        list(data.gallery), *(tensors[name] for name in TENSORS),
        timings={**timings, "images_encoded": 0, "cache": "hit"},
    )


def save(path: Path, ident: dict, data: SplitData, emb: SplitEmbeddings) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "identity": json.dumps(ident),
        "gallery_ids": json.dumps(list(data.gallery)),
        "pair_ids": json.dumps([q.pair_id for q in data.queries]),
        "timings": json.dumps(emb.timings),
    }
    tensors = {name: getattr(emb, name).contiguous() for name in TENSORS}
    replace_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def cached_embed(embed, backbone, data: SplitData, precision: str, directory: Path | None):
    """`embed(partial)` unless the cache holds these embeddings; stores what it computes.
    `partial` is the folder where `embed` keeps finished batches (None without a
    cache). Under torchrun rank 0 decides and the others follow (they return None)."""
    if directory is None:
        return embed(None)
    ident = identity(backbone, data, precision)
    path = cache_path(directory, ident)
    hit = load(path, ident, data) if distributed.is_main() else None
    if distributed.broadcast_from_rank0(hit is not None):
        return hit
    emb = embed(partial_path(path))
    if emb is not None:  # rank 0
        emb.timings["cache"] = "resumed" if emb.timings.get("images_resumed") else "miss"
        save(path, ident, data, emb)
        partial_embeddings.remove(partial_path(path))
    return emb



