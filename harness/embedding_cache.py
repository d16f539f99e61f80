"""On-disk cache of a split's embeddings (safetensors), so a second evaluation of
the same weights on the same data encodes no image.

The key hashes everything the embeddings depend on: backbone, checkpoint
content (SHA-256), preprocessing, text length, precision, suite, split and the
annotation files' hashes. A file whose stored identity or ids do not match is
never used. Files are written to a temporary name and renamed, so an interrupted
or concurrent writer never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from harness import distributed
from harness.embed import SplitEmbeddings
from harness.suites.base import SplitData

CACHE_VERSION = 1
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
        "split_sha256": data.provenance.get("split_sha256"),
    }


def cache_path(directory: Path, ident: dict) -> Path:
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]
    return directory / f"{ident['suite']}_{ident['split']}_{ident['backbone']}_{digest}.safetensors"


def load(path: Path, ident: dict, data: SplitData) -> SplitEmbeddings | None:
    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path))
        with open(path, "rb") as handle:  # the metadata lives in the header
            header_len = int.from_bytes(handle.read(8), "little")
            metadata = json.loads(handle.read(header_len))["__metadata__"]
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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file({name: getattr(emb, name).contiguous() for name in TENSORS}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_embed(embed, backbone, data: SplitData, precision: str, directory: Path | None):
    """`embed()` unless the cache holds these embeddings; stores what it computes.
    Under torchrun rank 0 decides and the others follow (they return None)."""
    if directory is None:
        return embed()
    ident = identity(backbone, data, precision)
    path = cache_path(directory, ident)
    hit = load(path, ident, data) if distributed.is_main() else None
    if distributed.broadcast_from_rank0(hit is not None):
        return hit
    emb = embed()
    if emb is not None:  # rank 0
        emb.timings["cache"] = "miss"
        save(path, ident, data, emb)
    return emb



