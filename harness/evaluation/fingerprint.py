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
          "convention", "tie_rule", "caption_cleaning", "query_template", "text_length", "image_size",
          "interpolation", "precision", "token_pooling", "similarity", "similarity_study", "rerank", "composer",
          "prompt")
# Fields added after results were published: left out of the hash at these values, so
# earlier results keep their hashes (None: the field does not apply).
ADDED_FIELDS = {"query_template": "caption", "token_pooling": None, "similarity_study": None, "rerank": None,
                "composer": None, "prompt": None}


def model_fields(backbone, similarity: str) -> dict:
    """The fingerprint's fields that the backbone decides, and the similarity the
    scoring computed (harness/evaluation/token_pooling.py `similarity_name`)."""
    composer = backbone.describe_composer() if hasattr(backbone, "describe_composer") else {}
    return {
        "text_length": backbone.max_text_len,
        "image_size": backbone.image_size,
        "interpolation": backbone.preprocessing.describe().get("resize"),
        "similarity": similarity,
        # CLIP backbones: the composed query's rule and the text it reads (backbones/composers)
        "composer": composer.get("composer"),
        "prompt": composer.get("prompt"),
    }


def fingerprint(data: SplitData, protocol_block: dict, model: dict, precision: str, gallery_model: dict) -> dict:
    """The fingerprint of scoring `data` as `protocol_block` (the protocol's
    describe(), with the run's token pooling) says, with the model side `model`
    (`model_fields`), in `precision`, the gallery features from `gallery_model`
    (harness/evaluation/fixed_gallery.py's record)."""
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
        "query_template": protocol_block.get("query_template"),
        **{k: model[k] for k in ("text_length", "image_size", "interpolation")},
        "precision": precision,
        "token_pooling": protocol_block.get("token_pooling"),
        "similarity": model["similarity"],
        # the methods of the run's similarity study and their bank (harness/similarity), None without one
        "similarity_study": protocol_block.get("similarity_study"),
        # the second stage (harness/rerank): re-ranker, K, fusion and its weights, None without one
        "rerank": protocol_block.get("rerank"),
        "composer": model.get("composer"),
        "prompt": model.get("prompt"),
    }
    return {**fields, "hash": fingerprint_hash(fields)}


def fingerprint_hash(fields: dict) -> str:
    identity = {k: fields.get(k) for k in FIELDS
                if not (k in ADDED_FIELDS and fields.get(k) in (None, ADDED_FIELDS[k]))}
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
