"""Pic2Word's own checkpoint (.pt) -> the `pic2word` composer with its trained mapping.

Pic2Word's training saves {"epoch", "name", "state_dict" (CLIP), "state_dict_img2text"
(the mapping), "optimizer"} (google-research/composed_image_retrieval at 8c05329,
src/main.py:225-232); its evaluation loads "state_dict_img2text" after stripping
the "module." prefix that DistributedDataParallel adds (src/eval_retrieval.py:100-107).
The mapping's keys (model/model.py:30-40): layers.<i>.0.weight / .bias, the Linear
of block i (its Dropout and ReLU hold no weights), and fc_out.weight / .bias.

The sizes (CLIP embedding, middle, token width, block count) are read from the
weights. CLIP's own weights in the file are not read: Pic2Word keeps CLIP frozen,
so they are the released CLIP's, which the backbone loads from its own checkpoint.
The file is read with torch.load(weights_only=True) (backbones/checkpoint_files.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from backbones.checkpoint_files import listing, read_weights_only
from backbones.composers.pic2word import PROMPT, Pic2Word
from harness.core.errors import HarnessError

MAPPING_ENTRY = "state_dict_img2text"
_BLOCK = re.compile(r"layers\.(\d+)\.0\.(weight|bias)")


def load_pic2word_file(path: str | Path, dropout: float = 0.1, prompt: str = PROMPT) -> Pic2Word:
    """The composer with the file's mapping weights (dropout and prompt are not stored
    in the file: Pic2Word's defaults)."""
    path = Path(path)
    checkpoint = read_weights_only(path, "pic2word")
    if not isinstance(checkpoint, Mapping) or MAPPING_ENTRY not in checkpoint:
        keys = list(checkpoint) if isinstance(checkpoint, Mapping) else []
        raise HarnessError(f"{path}: no {MAPPING_ENTRY!r} entry (top-level keys: {listing(keys)}); "
                           "Pic2Word's training keeps the mapping network's weights there")
    weights = mapping_weights(checkpoint[MAPPING_ENTRY], path)
    blocks = sum(1 for key in weights if key.endswith(".0.weight"))
    first = weights["layers.0.0.weight"] if blocks else weights["fc_out.weight"]
    composer = Pic2Word(embed_dim=first.shape[1], middle_dim=first.shape[0], layers=blocks, dropout=dropout,
                        width=weights["fc_out.weight"].shape[0], prompt=prompt)
    try:
        composer.module.load_state_dict(weights)
    except RuntimeError as error:  # sizes that do not chain from one layer to the next
        raise HarnessError(f"{path}: the mapping's weights do not fit one network: {error}") from None
    composer.trained = True
    return composer


def mapping_weights(state: Mapping, path: Path) -> dict[str, torch.Tensor]:
    """The mapping's state dict without a "module." prefix, its keys checked: every
    block from 0 to the last one the file names, and fc_out, nothing else."""
    weights = {key.removeprefix("module."): value for key, value in state.items()}
    blocks = {int(m.group(1)) for m in map(_BLOCK.fullmatch, weights) if m}
    expected = {f"layers.{i}.0.{p}" for i in range(max(blocks, default=-1) + 1) for p in ("weight", "bias")}
    expected |= {"fc_out.weight", "fc_out.bias"}
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise HarnessError(f"{path}: {MAPPING_ENTRY} is not Pic2Word's mapping network (IM2TEXT): "
                           f"missing {listing(missing) or 'none'}; unexpected {listing(unexpected) or 'none'}")
    not_tensors = [key for key, value in weights.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise HarnessError(f"{path}: {MAPPING_ENTRY} entries that are not tensors: {listing(not_tensors)}")
    return {key: value.float() for key, value in weights.items()}
