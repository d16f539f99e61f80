"""Reading original BLIP and CoVR checkpoint files: weights only, the state dict
where each format keeps it. The caller names the format; nothing is guessed from a
file's keys.

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
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from harness.core.errors import HarnessError

FORMATS = ("blip", "covr")

# CoVR's learning-rate schedules, pickled whole inside its .ckpt files.
COVR_SCHEDULE_CLASSES = ("src.tools.scheduler.CosineSchedule", "src.tools.scheduler.StepSchedule")


class InertRecord:
    """Stands in for a pickled CoVR schedule: its attributes are read as data and
    it has no behaviour, so reading it runs no code from the file's authors."""


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
        checkpoint = read_weights_only(path, fmt, inert_classes=COVR_SCHEDULE_CLASSES)
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
    if fmt != "covr" and any(name in COVR_SCHEDULE_CLASSES for name in names):
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
        f"{listing(_top_level_keys(checkpoint))}). BLIP's checkpoints keep their weights under 'model'."
    )


def _covr_weights(checkpoint: Any, path: Path) -> Mapping[str, Any]:
    if not (isinstance(checkpoint, Mapping) and "model" in checkpoint):
        raise HarnessError(
            f"{path}: no 'model' entry (top-level keys: {listing(_top_level_keys(checkpoint))}). "
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
        raise HarnessError(f"{path}: entries that are not tensors in the state dict: {listing(not_tensors)}")
    return dict(weights)


def _top_level_keys(checkpoint: Any) -> list[str]:
    return [str(key) for key in checkpoint] if isinstance(checkpoint, Mapping) else [type(checkpoint).__name__]


def listing(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... and {len(names) - limit} more" if len(names) > limit else "")
