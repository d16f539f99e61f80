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
from backbones.blip import ENC_TOKEN, BlipComposer, bert_tokenizer_with_dec
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
from harness.core.errors import HarnessError

FILE_KINDS = {".pth": "blip", ".ckpt": "covr"}
# BLIP's init_tokenizer: bert-base-uncased (30,522 tokens), then [DEC] as bos, then [ENC].
BLIP_VOCAB_SIZE, BLIP_DEC_ID, BLIP_ENC_ID = 30524, 30522, 30523


def with_blip_vit_eps(config: BlipConfig) -> BlipConfig:
    """BLIP's ViT builds its LayerNorms with eps 1e-6 (models/vit.py); hub configs
    carry transformers' default 1e-5. Every loading path of a BLIP checkpoint sets it."""
    config.vision_config.layer_norm_eps = convert.BLIP_VIT_LAYER_NORM_EPS
    return config


def check_blip_special_tokens(tokenizer, vocab_size: int) -> None:
    """With BLIP's own vocabulary, [DEC] and [ENC] must have BLIP's ids: the text
    encoder's embedding rows were trained for those ids."""
    if vocab_size != BLIP_VOCAB_SIZE:
        return  # another vocabulary (a user's model): nothing to compare with
    got = (tokenizer.convert_tokens_to_ids("[DEC]"), tokenizer.convert_tokens_to_ids(ENC_TOKEN))
    if got != (BLIP_DEC_ID, BLIP_ENC_ID):
        raise HarnessError(
            f"the tokenizer gives [DEC] id {got[0]} and {ENC_TOKEN} id {got[1]}; BLIP's init_tokenizer gives "
            f"{BLIP_DEC_ID} and {BLIP_ENC_ID} (bert-base-uncased, then [DEC], then {ENC_TOKEN}): the text "
            f"encoder would read another embedding row. Use BLIP's tokenizer (--tokenizer)")


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
            config = with_blip_vit_eps(BlipConfig.from_pretrained(resolved.source))
            model = from_pretrained_strict(BlipForImageTextRetrieval, resolved.source, config=config,
                                           dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(resolved.source)
        image_size = model.config.vision_config.image_size
        composer = BlipComposer(
            cls.name, model, tokenizer, ImagePreprocess(image_size), resolved.source,
            checkpoint_sha256(resolved),
        )
        check_blip_special_tokens(composer.tokenizer, model.config.text_config.vocab_size)
        composer.model.to(device).eval()
        return composer

    @classmethod
    def _from_original(cls, path: str, options: LoadOptions):
        fmt = format_for_file(path, options.checkpoint_format, FILE_KINDS, cls.name)
        config = with_blip_vit_eps(BlipConfig.from_json_file(options.model_config) if options.model_config
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
