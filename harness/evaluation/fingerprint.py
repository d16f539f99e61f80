"""The protocol fingerprint: one record of everything that decides a number beyond
the weights, and a short hash of it, on every result. Two results with the same
fingerprint were scored the same way; where a paper's protocol is known
(harness/evaluation/paper.py), `differences` names the fields where a run's differs.
"""

from __future__ import annotations

import hashlib
import json

from harness.suites.base import SplitData

# The fields, in the order tables show them.
FIELDS = ("suite", "split", "reader_version", "gallery", "gallery_images", "gallery_features", "reference_removed",
          "convention", "tie_rule", "caption_cleaning", "text_length", "image_size", "interpolation", "precision",
          "similarity")


def similarity_of(backbone) -> str:
    """How a query scores against a gallery item."""
    if getattr(backbone, "multi_vector", False):
        if getattr(backbone, "query_multi_vector", False):
            return "max over token pairs (BLIP-2 query tokens x gallery tokens)"
        return "max over gallery tokens"
    return "cosine (one vector each)"


def model_fields(backbone) -> dict:
    """The fingerprint's fields that the backbone decides."""
    return {
        "text_length": backbone.max_text_len,
        "image_size": backbone.image_size,
        "interpolation": backbone.preprocessing.describe().get("resize"),
        "similarity": similarity_of(backbone),
    }


def fingerprint(data: SplitData, protocol_block: dict, model: dict, precision: str, gallery_model: dict) -> dict:
    """The fingerprint of scoring `data` as `protocol_block` (the protocol's
    describe()) says, with the model side `model` (`model_fields`), in `precision`,
    the gallery features from `gallery_model` (harness/evaluation/fixed_gallery.py's
    record)."""
    fields = {
        "suite": data.suite,
        "split": data.split,
        "reader_version": data.provenance.get("reader_version"),
        "gallery": data.provenance.get("gallery", "split file"),
        "gallery_images": len(data.gallery),
        "gallery_features": "evaluated model" if gallery_model["rule"] == "loaded"
        else f"fixed: {gallery_model['rule']} ({str(gallery_model['checkpoint_sha256'])[:12]})",
        "reference_removed": protocol_block.get("reference_removed", True),
        "convention": protocol_block.get("convention"),
        "tie_rule": protocol_block.get("tie_rule"),
        "caption_cleaning": data.provenance.get("caption_cleaning", "none"),
        **{k: model[k] for k in ("text_length", "image_size", "interpolation")},
        "precision": precision,
        "similarity": model["similarity"],
    }
    return {**fields, "hash": fingerprint_hash(fields)}


def fingerprint_hash(fields: dict) -> str:
    identity = {k: fields.get(k) for k in FIELDS}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def differences(run: dict, paper: dict) -> list[str]:
    """"field: run's vs paper's" for every field the paper's protocol states and the
    run's fingerprint has otherwise (a paper field None means "not stated")."""
    out = []
    for field in FIELDS:
        theirs = paper.get(field)
        ours = run.get(field)
        if theirs is not None and ours is not None and _shown(ours) != _shown(theirs):
            out.append(f"{field}: {_shown(ours)} vs {_shown(theirs)}")
    return out


def _shown(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
