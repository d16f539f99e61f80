"""`blip-base` and `blip-large`: BLIP retrieval models (COCO fine-tuned, as CoVR
starts from), 384 px, from

- a transformers directory or hub id (default Salesforce/blip-itm-{base,large}-coco);
- an original checkpoint file, converted on load by backbones/convert.py:
  BLIP's model_{base,large}_retrieval_coco.pth (format "blip", the .pth kind) or
  CoVR's Lightning .ckpt (format "covr", the .ckpt kind). These carry weights
  only: the architecture is BLIP's (backbones/blip_configs.py, or --model-config)
  and the tokenizer is bert-base-uncased with BLIP's [DEC] and [ENC] added
  (--tokenizer names a directory or hub id; default bert-base-uncased).
"""

from __future__ import annotations

import torch
from transformers import AutoTokenizer, BlipConfig, BlipForImageTextRetrieval

from backbones import checkpoint_files, convert
from backbones.base import LoadOptions, register_backbone
from backbones.blip import BlipComposer, bert_tokenizer_with_dec
from backbones.blip_configs import blip_config
from backbones.checkpoints import (
    DEFAULT_TOKENIZER,
    checkpoint_sha256,
    format_for_file,
    preflight_problems,
    resolve,
)
from backbones.integrity import from_pretrained_strict
from backbones.preprocess import ImagePreprocess

FILE_KINDS = {".pth": "blip", ".ckpt": "covr"}


class PretrainedBlip:
    name: str
    size: str
    default_checkpoint: str
    image_size = 384

    @classmethod
    def check(cls, options: LoadOptions) -> list[str]:
        def check_file_format(path: str) -> None:
            checkpoint_files.check_format(format_for_file(path, options.checkpoint_format, FILE_KINDS, cls.name))

        return preflight_problems(options, cls.default_checkpoint, cls.name, check_file_format)

    @classmethod
    def load(cls, options: LoadOptions, device: torch.device) -> BlipComposer:
        resolved = resolve(options.checkpoint, cls.default_checkpoint, cls.name)
        if resolved.kind == "file":
            model, tokenizer = cls._from_original(resolved.source, options)
        else:
            model = from_pretrained_strict(BlipForImageTextRetrieval, resolved.source)
            tokenizer = AutoTokenizer.from_pretrained(resolved.source)
        image_size = model.config.vision_config.image_size
        composer = BlipComposer(
            cls.name, model, tokenizer, ImagePreprocess(image_size), resolved.source,
            checkpoint_sha256(resolved),
        )
        composer.model.to(device).eval()
        return composer

    @classmethod
    def _from_original(cls, path: str, options: LoadOptions):
        fmt = format_for_file(path, options.checkpoint_format, FILE_KINDS, cls.name)
        config = (BlipConfig.from_json_file(options.model_config) if options.model_config
                  else blip_config(cls.size))
        state_dict, report = convert.convert_checkpoint(path, fmt, config)
        model = BlipForImageTextRetrieval(config)
        convert.load_converted(model, state_dict, left_at_init=report.left_at_init)
        return model, bert_tokenizer_with_dec(options.tokenizer or DEFAULT_TOKENIZER)


@register_backbone("blip-base")
class BlipBase(PretrainedBlip):
    name = "blip-base"
    size = "base"
    default_checkpoint = "Salesforce/blip-itm-base-coco"


@register_backbone("blip-large")
class BlipLarge(PretrainedBlip):
    name = "blip-large"
    size = "large"
    default_checkpoint = "Salesforce/blip-itm-large-coco"
