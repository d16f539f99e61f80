"""Original BLIP and CoVR checkpoints -> transformers' BlipForImageTextRetrieval.

The caller names the format ("blip" or "covr"); nothing is guessed from a file's keys.
Files are read by backbones/checkpoint_files.py (torch.load(weights_only=True) only;
where each format keeps its weights is described there). This module renames their
keys, fits the position table, and checks the result against the model's keys and
shapes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import BlipConfig, BlipForImageTextRetrieval

from backbones.checkpoint_files import file_sha256, listing, load_original_state_dict
from harness.core.errors import HarnessError

# BLIP's ViT builds its LayerNorms with eps=1e-6 (models/vit.py); transformers'
# BlipVisionConfig defaults to 1e-5.
BLIP_VIT_LAYER_NORM_EPS = 1e-6

# Keys of the original models that retrieval embeddings never read: ALBEF-style
# momentum encoders, the contrastive queues, the learned temperature, and BERT's
# position_ids buffer (transformers rebuilds it; it is not in its state dict).
_UNUSED_FOR_RETRIEVAL = re.compile(
    r"(visual_encoder_m|vision_proj_m|text_encoder_m|text_proj_m)\..+"
    r"|image_queue|text_queue|idx_queue|ptr_queue|temp"
    r"|text_encoder\.embeddings\.position_ids"
)

# BLIP's timm-style ViT (models/vit.py) -> transformers' BlipVisionModel, for the
# part of the key after "visual_encoder." / "vision_model.". Shapes are the same on
# both sides: cls_token (1, 1, H), pos_embed (1, N + 1, H), qkv fused as (3H, H).
_VISION_RENAMES = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"cls_token", "embeddings.class_embedding"),
        (r"pos_embed", "embeddings.position_embedding"),
        (r"patch_embed\.proj\.(weight|bias)", r"embeddings.patch_embedding.\1"),
        (r"blocks\.(\d+)\.norm1\.(weight|bias)", r"encoder.layers.\1.layer_norm1.\2"),
        (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"encoder.layers.\1.self_attn.qkv.\2"),
        (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"encoder.layers.\1.self_attn.projection.\2"),
        (r"blocks\.(\d+)\.norm2\.(weight|bias)", r"encoder.layers.\1.layer_norm2.\2"),
        (r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"encoder.layers.\1.mlp.\2.\3"),
        (r"norm\.(weight|bias)", r"post_layernorm.\1"),
    )
)

# Keys a format never stores although the transformers model has them; the model
# keeps its initial values there. CoVR's BLIPCir has no ITM head, which retrieval
# does not use.
NOT_STORED = {"covr": ("itm_head.weight", "itm_head.bias")}


POSITION_KEY = "vision_model.embeddings.position_embedding"


@dataclass(frozen=True)
class ConversionReport:
    dropped: list[str]  # original keys retrieval does not use
    missing: list[str]  # model keys the converted checkpoint lacks
    unexpected: list[str]  # converted keys the model does not have
    sha256: str  # of the original file
    fmt: str = ""
    mismatched: list[str] = field(default_factory=list)  # "key: checkpoint (..) vs model (..)"
    left_at_init: list[str] = field(default_factory=list)  # model keys the format never stores
    notes: list[str] = field(default_factory=list)  # interpolation, config differences

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


class Converted(NamedTuple):
    state_dict: dict[str, Tensor]
    dropped: list[str]
    notes: list[str]


@dataclass(frozen=True)
class KeyDiff:
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)


# -- renaming ---------------------------------------------------------------------------


def blip_to_transformers(
    original: Mapping[str, Tensor], config: BlipConfig, *, interpolate_positions: bool = False
) -> Converted:
    """Rename BLIP's keys to BlipForImageTextRetrieval's and drop what retrieval never
    reads. The text encoder (BLIP's med.py BertModel with cross-attention),
    vision_proj, text_proj and itm_head already carry transformers' names. A key no
    rule knows keeps its original name, so a strict load reports it as unexpected."""
    state_dict: dict[str, Tensor] = {}
    dropped: list[str] = []
    for key, value in original.items():
        if _UNUSED_FOR_RETRIEVAL.fullmatch(key):
            dropped.append(key)
        else:
            state_dict[transformers_key(key)] = value
    notes = _fit_positions(state_dict, config, interpolate_positions)
    return Converted(state_dict, dropped, notes)


def transformers_key(original_key: str) -> str:
    prefix = "visual_encoder."
    if not original_key.startswith(prefix):
        return original_key
    rest = original_key[len(prefix):]
    for pattern, replacement in _VISION_RENAMES:
        if pattern.fullmatch(rest):
            return "vision_model." + pattern.sub(replacement, rest)
    return original_key


def num_positions(config: BlipConfig) -> int:
    vision = config.vision_config
    return (vision.image_size // vision.patch_size) ** 2 + 1


def _fit_positions(state_dict: dict[str, Tensor], config: BlipConfig, interpolate: bool) -> list[str]:
    """Check the ViT position table against the config; resize it only when asked."""
    table = state_dict.get(POSITION_KEY)
    wanted = num_positions(config)
    if table is None or table.dim() != 3 or table.shape[1] == wanted:
        return []  # absent or malformed: the key comparison reports it
    have = table.shape[1]
    vision = config.vision_config
    if not interpolate:
        raise HarnessError(
            f"the checkpoint's ViT has {have} position embeddings but the config (image_size "
            f"{vision.image_size}, patch_size {vision.patch_size}) needs {wanted}. BLIP's retrieval "
            "checkpoints are 384 px (577 positions with patch 16): use a config with the "
            "checkpoint's image size, or ask for interpolation (interpolate_positions=True), "
            "which resizes the grid bicubically as BLIP's interpolate_pos_embed does."
        )
    state_dict[POSITION_KEY] = interpolate_position_embedding(table, wanted)
    return [f"position embeddings interpolated from {have} to {wanted} (bicubic, as BLIP's interpolate_pos_embed)"]


def interpolate_position_embedding(table: Tensor, positions: int) -> Tensor:
    """BLIP's interpolate_pos_embed: the class position is kept and the square grid of
    patch positions is resized bicubically (align_corners=False)."""
    cls_position, grid = table[:, :1], table[:, 1:]
    old, new = _grid_side(grid.shape[1]), _grid_side(positions - 1)
    width = grid.shape[-1]
    grid = grid.reshape(1, old, old, width).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(new, new), mode="bicubic", align_corners=False)
    grid = grid.to(table.dtype).permute(0, 2, 3, 1).reshape(1, new * new, width)
    return torch.cat([cls_position, grid], dim=1)


def _grid_side(patches: int) -> int:
    side = math.isqrt(patches)
    if side * side != patches:
        raise HarnessError(f"{patches} patch positions do not form a square grid; cannot interpolate them")
    return side


def config_notes(config: BlipConfig) -> list[str]:
    """Config values that make the converted model differ from the original one."""
    eps = config.vision_config.layer_norm_eps
    if eps == BLIP_VIT_LAYER_NORM_EPS:
        return []
    return [
        f"vision_config.layer_norm_eps is {eps:g} but BLIP's ViT uses {BLIP_VIT_LAYER_NORM_EPS:g}: "
        "outputs differ slightly from the original model's; set it to 1e-6 to match them exactly"
    ]


# -- checking and loading ------------------------------------------------------------


def expected_shapes(config: BlipConfig) -> dict[str, torch.Size]:
    """BlipForImageTextRetrieval's state-dict shapes for a config, built on the meta
    device so that no memory is allocated and nothing is initialised."""
    with torch.device("meta"):
        model = BlipForImageTextRetrieval(config)
    return {key: value.shape for key, value in model.state_dict().items()}


def compare_keys(
    expected: Mapping[str, torch.Size], provided: Mapping[str, Tensor], allowed_missing: Iterable[str] = ()
) -> KeyDiff:
    allowed = set(allowed_missing)
    missing = sorted(key for key in expected if key not in provided and key not in allowed)
    unexpected = sorted(key for key in provided if key not in expected)
    mismatched = sorted(
        f"{key}: checkpoint {tuple(provided[key].shape)} vs model {tuple(shape)}"
        for key, shape in expected.items()
        if key in provided and provided[key].shape != shape
    )
    return KeyDiff(missing, unexpected, mismatched)


def convert_checkpoint(
    path: str | Path, fmt: str, config: BlipConfig, *, interpolate_positions: bool = False
) -> tuple[dict[str, Tensor], ConversionReport]:
    """Read, rename and check an original checkpoint against the model the config
    describes. Mismatches are reported, not raised: load_converted raises on them."""
    original = load_original_state_dict(path, fmt)
    converted = blip_to_transformers(original, config, interpolate_positions=interpolate_positions)
    expected = expected_shapes(config)
    left_at_init = [key for key in NOT_STORED.get(fmt, ()) if key in expected and key not in converted.state_dict]
    diff = compare_keys(expected, converted.state_dict, allowed_missing=left_at_init)
    report = ConversionReport(
        dropped=converted.dropped,
        missing=diff.missing,
        unexpected=diff.unexpected,
        sha256=file_sha256(path),
        fmt=fmt,
        mismatched=diff.mismatched,
        left_at_init=left_at_init,
        notes=converted.notes + config_notes(config),
    )
    return converted.state_dict, report


def load_converted(
    model: BlipForImageTextRetrieval, state_dict: Mapping[str, Tensor], *, left_at_init: Iterable[str] = ()
) -> None:
    """Strict load: every model key must come from the checkpoint, except those named
    in left_at_init (ConversionReport.left_at_init), which keep their values."""
    left_at_init = list(left_at_init)
    expected = {key: value.shape for key, value in model.state_dict().items()}
    diff = compare_keys(expected, state_dict, allowed_missing=left_at_init)
    if diff:
        raise HarnessError(mismatch_message(diff))
    result = model.load_state_dict(dict(state_dict), strict=False)
    # compare_keys is the strict check; this only guards against it disagreeing with torch
    if result.unexpected_keys or not set(result.missing_keys) <= set(left_at_init):
        raise RuntimeError(f"load_state_dict disagrees with compare_keys: {result}")


def mismatch_message(diff: KeyDiff) -> str:
    parts = [
        f"the converted checkpoint does not fit the model: {len(diff.missing)} missing, "
        f"{len(diff.unexpected)} unexpected, {len(diff.mismatched)} with another shape."
    ]
    if diff.missing:
        parts.append(f"missing ({len(diff.missing)}): {listing(diff.missing)}")
    if diff.unexpected:
        parts.append(f"unexpected ({len(diff.unexpected)}): {listing(diff.unexpected)}")
    if diff.mismatched:
        parts.append(f"other shape ({len(diff.mismatched)}): {listing(diff.mismatched)}")
    parts.append(
        "Check the checkpoint format (blip: BLIP's model_*_retrieval_coco.pth; covr: CoVR's .ckpt) "
        "and that the backbone matches the checkpoint's size (BLIP base: ViT-B/16, 12 layers, width "
        "768; large: ViT-L/16, 24 layers, width 1024; image size as trained, 384 for retrieval)."
    )
    return "\n".join(parts)
