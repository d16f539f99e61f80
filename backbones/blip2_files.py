"""BLIP-2 checkpoints from files and directories, converted to
Blip2ForImageTextRetrieval (backbones/convert_blip2.py does the renaming):

- a transformers directory or hub id, with the Q-Former text path switched on;
- "lavis": LAVIS' blip2_finetune_coco.pth (weights under "model");
- "covr2": CoVR-2's .ckpt. Its train.py saves with Lightning Fabric,
  {"epoch", "model", "optimizer", "scheduler"}: "model" is BLIP2Cir's state dict
  (LAVIS' names: visual_encoder.*, ln_vision.*, Qformer.*, query_tokens, vision_proj.*,
  text_proj.*; no ITM head, whose weights then keep their initial values: retrieval
  does not use them), "scheduler" CoVR's own schedule object, read as an inert record.

Weight-only files take the architecture of blip2_finetune_coco (or --model-config) and
bert-base-uncased + [DEC] as tokenizer (or --tokenizer).
"""

from __future__ import annotations

from pathlib import Path

from transformers import Blip2Config, Blip2ForImageTextRetrieval, PreTrainedTokenizerBase

from backbones.base import LoadOptions
from backbones.blip import bert_tokenizer_with_dec
from backbones.checkpoint_files import COVR_SCHEDULE_CLASSES, read_weights_only
from backbones.checkpoints import DEFAULT_TOKENIZER
from backbones.convert_blip2 import lavis_blip2_to_transformers, lavis_coco_config
from backbones.integrity import from_pretrained_strict
from harness.core.errors import HarnessError

FILE_KINDS = {".pth": "lavis", ".ckpt": "covr2"}
ITM_HEAD = ("itm_head.weight", "itm_head.bias")


def load_blip2_model(source: str) -> Blip2ForImageTextRetrieval:
    """from_pretrained with the Q-Former text path switched on. Older hub configs spell it
    `qformer_text_input`, which transformers 5 ignores: the text weights would then be
    dropped silently. Any weight the checkpoint lacks (or holds beyond the model's) is an
    error naming it, not a random init (backbones/integrity.py). Weights load as fp32."""
    import torch

    config = Blip2Config.from_pretrained(source)
    config.qformer_config.use_qformer_text_input = True
    return from_pretrained_strict(Blip2ForImageTextRetrieval, source, config=config, dtype=torch.float32)


def load_original_file(path: str, fmt: str, options: LoadOptions
                       ) -> tuple[Blip2ForImageTextRetrieval, PreTrainedTokenizerBase]:
    config = Blip2Config.from_json_file(options.model_config) if options.model_config else lavis_coco_config()
    config.qformer_config.use_qformer_text_input = True
    checkpoint = read_weights_only(Path(path), fmt, COVR_SCHEDULE_CLASSES if fmt == "covr2" else ())
    not_stored = ()
    if fmt == "covr2":
        checkpoint, not_stored = covr2_state_dict(checkpoint, path), ITM_HEAD
    try:
        state_dict, _dropped = lavis_blip2_to_transformers(checkpoint, config, not_stored)
    except ValueError as error:
        raise HarnessError(f"{path}: {error}") from error
    model = Blip2ForImageTextRetrieval(config)
    result = model.load_state_dict(state_dict, strict=False)
    left = sorted(result.missing_keys)
    if result.unexpected_keys or any(key not in not_stored for key in left):
        raise HarnessError(f"{path}: weights the model lacks {result.unexpected_keys[:5]}, or missing {left[:5]}")
    return model, bert_tokenizer_with_dec(options.tokenizer or DEFAULT_TOKENIZER)


def covr2_state_dict(checkpoint, path: str) -> dict:
    """BLIP2Cir's state dict from CoVR-2's Fabric checkpoint ("model", a "module." prefix stripped)."""
    if not (isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict)):
        keys = list(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise HarnessError(f"{path}: no 'model' entry (top-level: {keys}); CoVR-2's train.py saves "
                           "{'epoch', 'model', 'optimizer', 'scheduler'} with Lightning Fabric")
    return {key.removeprefix("module."): value for key, value in checkpoint["model"].items()}
