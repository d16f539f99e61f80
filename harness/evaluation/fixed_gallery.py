"""Which model's features the gallery is scored with (`--gallery-model`).

CoVR-2 fine-tunes BLIP-2's Q-Former and query tokens but scores its queries against
gallery features computed once with the COCO model it started from (its embedding
files; lucas-ventura/CoVR tools/embs/save_blip2_embs_imgs.py, src/test/blip2/cirr.py),
and trains against those same fixed features. BLIP-2's gallery features pass through
the Q-Former, so the fine-tuned model's own would differ. The rule:

- "auto" (default): for a backbone whose gallery features depend on trained weights
  (BLIP-2): the gallery of the model before fine-tuning when the run trains, or of the
  backbone's base checkpoint when it loads a fine-tuned CoVR-2 .ckpt; for BLIP, whose
  gallery side (ViT, vision_proj) fine-tuning leaves frozen, the loaded model itself;
- "loaded": always the evaluated model's own features;
- a checkpoint (directory, hub id or file): that checkpoint's.

The image-only baseline (the reference image's embedding) comes from the same model
as the gallery; the composed and text-only queries from the evaluated model.
"""

from __future__ import annotations

from dataclasses import replace

from harness.evaluation.embed import SplitEmbeddings

BEFORE_TRAINING = "the model before fine-tuning"
LOADED = "loaded"


def gallery_rule(choice: str, backbone, trains: bool, checkpoint: str | None, checkpoint_format: str | None,
                 base_checkpoint: str | None) -> str:
    """LOADED, BEFORE_TRAINING, or the checkpoint whose gallery features score."""
    if choice != "auto":
        return choice
    if not getattr(backbone, "fixed_training_targets", False):
        return LOADED
    if trains:
        return BEFORE_TRAINING
    fine_tuned = checkpoint_format == "covr2" or (checkpoint or "").endswith(".ckpt")
    return base_checkpoint if fine_tuned and base_checkpoint else LOADED


def with_gallery_of(queries: SplitEmbeddings, gallery: SplitEmbeddings) -> SplitEmbeddings:
    """`queries`' composed and text embeddings, `gallery`'s gallery and reference images."""
    return replace(queries, gallery=gallery.gallery, image=gallery.image,
                   timings={**queries.timings, "gallery_model": gallery.timings})


def describe(rule: str, checkpoint_id: str, checkpoint_sha256: str) -> dict:
    """The results' record of the gallery features' model."""
    return {"rule": rule if rule in (LOADED, BEFORE_TRAINING) else "checkpoint",
            "checkpoint": checkpoint_id, "checkpoint_sha256": checkpoint_sha256}
