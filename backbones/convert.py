"""Original BLIP and CoVR checkpoints -> transformers' BlipForImageTextRetrieval.

The caller names the format; nothing is guessed from a file's keys.

- "blip": Salesforce BLIP's retrieval checkpoints (model_base_retrieval_coco.pth,
  model_large_retrieval_coco.pth). BLIP's training scripts save
  {"model": state_dict, "optimizer", "config", "epoch"} and its load_checkpoint
  reads checkpoint["model"]; that is where the weights are taken from. A file with
  no "model" entry whose values are all tensors is taken as a bare state dict
  (someone's torch.save(model.state_dict())).
- "covr": CoVR's .ckpt. CoVR's train.py saves with Lightning Fabric,
  fabric.save(f"ckpt_{epoch}.ckpt", {"epoch", "model", "optimizer", "scheduler"}):
  Fabric writes the unwrapped BLIPCir module's state_dict under "model" (BLIP's
  names: visual_encoder.*, text_encoder.*, vision_proj.*, text_proj.*; no ITM head,
  no momentum encoders, no queues), and "scheduler" is CoVR's own CosineSchedule /
  StepSchedule object, pickled whole. CoVR's load_checkpoint reads
  checkpoint["model"] and strips a "module." prefix; so do we.

Files are read with torch.load(weights_only=True) only. CoVR's two schedule classes
are read as inert records (their float attributes become data; no CoVR code is
imported or run); any other pickled object makes the load fail with a clear error.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import BlipConfig, BlipForImageTextRetrieval

from harness.errors import HarnessError

FORMATS = ("blip", "covr")

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

# CoVR's learning-rate schedules, pickled whole inside its .ckpt files.
_COVR_SCHEDULE_CLASSES = ("src.tools.scheduler.CosineSchedule", "src.tools.scheduler.StepSchedule")

POSITION_KEY = "vision_model.embeddings.position_embedding"


class InertRecord:
    """Stands in for a pickled CoVR schedule: its attributes are read as data and
    it has no behaviour, so reading it runs no code from the file's authors."""


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


# -- reading files --------------------------------------------------------------------


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_original_state_dict(path: str | Path, fmt: str) -> dict[str, Tensor]:
    """The weights of an original checkpoint, under the original model's key names."""
    check_format(fmt)
    path = Path(path)
    if fmt == "covr":
        checkpoint = read_weights_only(path, fmt, inert_classes=_COVR_SCHEDULE_CLASSES)
        weights = _covr_weights(checkpoint, path)
    else:
        checkpoint = read_weights_only(path, fmt)
        weights = _blip_weights(checkpoint, path)
    return _checked_state_dict(weights, path)


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise HarnessError(f"unknown checkpoint format {fmt!r}; known formats: {', '.join(FORMATS)}")


def read_weights_only(path: Path, fmt: str, inert_classes: tuple[str, ...] = ()) -> Any:
    """torch.load with weights_only=True; anything else pickled is refused by name."""
    if not path.is_file():
        raise HarnessError(f"checkpoint file {path} does not exist")
    allowed = [(InertRecord, name) for name in inert_classes]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, KeyError, RuntimeError, ...
        # UnpicklingError also comes from files that are not checkpoints at all:
        # refusal is only claimed when the objects it refused can be named.
        refused = _pickled_globals(path, error) if isinstance(error, pickle.UnpicklingError) else []
        names = [name for name in refused if name not in inert_classes]
        if names:
            raise HarnessError(_refused_message(path, fmt, names)) from None
        raise HarnessError(
            f"{path} could not be read as a torch checkpoint ({type(error).__name__}: "
            f"{_first_line(error)}); is it complete, and a .pth/.ckpt written by torch.save?"
        ) from None


def _refused_message(path: Path, fmt: str, names: list[str]) -> str:
    message = (
        f"{path} holds pickled Python objects besides tensors ({', '.join(names)}). "
        "It is read with torch.load(weights_only=True) only, which refuses them because "
        "unpickling them could run arbitrary code. If you trust the file, re-save its "
        "weights alone and convert that file instead:\n"
        f"  python -c \"import torch; c = torch.load('{path}', map_location='cpu', weights_only=False); "
        "torch.save({'model': c['model']}, 'weights.pth')\""
    )
    if fmt != "covr" and any(name in _COVR_SCHEDULE_CLASSES for name in names):
        message += "\nThe file looks like a CoVR .ckpt: was the format meant to be 'covr'?"
    return message


def _pickled_globals(path: Path, error: Exception) -> list[str]:
    """The classes/functions the file would need, read without unpickling it."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # legacy (non-zip) files: fall back on torch's message
        return re.findall(r"GLOBAL (\S+)", str(error))[:1]


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else "no message"


def _blip_weights(checkpoint: Any, path: Path) -> Mapping[str, Any]:
    if isinstance(checkpoint, Mapping) and "model" in checkpoint:
        return checkpoint["model"]
    if isinstance(checkpoint, Mapping) and checkpoint and all(isinstance(v, Tensor) for v in checkpoint.values()):
        return checkpoint  # a bare state dict
    raise HarnessError(
        f"{path}: no 'model' entry and not a bare state dict (top-level keys: "
        f"{_listing(_top_level_keys(checkpoint))}). BLIP's checkpoints keep their weights under 'model'."
    )


def _covr_weights(checkpoint: Any, path: Path) -> Mapping[str, Any]:
    if not (isinstance(checkpoint, Mapping) and "model" in checkpoint):
        raise HarnessError(
            f"{path}: no 'model' entry (top-level keys: {_listing(_top_level_keys(checkpoint))}). "
            "CoVR's train.py saves {'epoch', 'model', 'optimizer', 'scheduler'} with Lightning "
            "Fabric, weights under 'model'; is this a CoVR checkpoint?"
        )
    weights = checkpoint["model"]
    if not isinstance(weights, Mapping):
        return weights  # _checked_state_dict says what is wrong
    # CoVR's load_checkpoint strips the prefix DistributedDataParallel adds.
    return {key.removeprefix("module."): value for key, value in weights.items()}


def _checked_state_dict(weights: Any, path: Path) -> dict[str, Tensor]:
    if not isinstance(weights, Mapping):
        raise HarnessError(f"{path}: the weights entry is a {type(weights).__name__}, not a state dict")
    not_tensors = [key for key, value in weights.items() if not isinstance(value, Tensor)]
    if not_tensors:
        raise HarnessError(f"{path}: entries that are not tensors in the state dict: {_listing(not_tensors)}")
    return dict(weights)


def _top_level_keys(checkpoint: Any) -> list[str]:
    return [str(key) for key in checkpoint] if isinstance(checkpoint, Mapping) else [type(checkpoint).__name__]


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
        parts.append(f"missing ({len(diff.missing)}): {_listing(diff.missing)}")
    if diff.unexpected:
        parts.append(f"unexpected ({len(diff.unexpected)}): {_listing(diff.unexpected)}")
    if diff.mismatched:
        parts.append(f"other shape ({len(diff.mismatched)}): {_listing(diff.mismatched)}")
    parts.append(
        "Check the checkpoint format (blip: BLIP's model_*_retrieval_coco.pth; covr: CoVR's .ckpt) "
        "and that the backbone matches the checkpoint's size (BLIP base: ViT-B/16, 12 layers, width "
        "768; large: ViT-L/16, 24 layers, width 1024; image size as trained, 384 for retrieval)."
    )
    return "\n".join(parts)


def _listing(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... and {len(names) - limit} more" if len(names) > limit else "")
