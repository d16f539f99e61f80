"""`blip-base` and `blip-large`: Salesforce's BLIP retrieval checkpoints (COCO
fine-tuned, as CoVR starts from) in transformers format, 384 px."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer, BlipForImageTextRetrieval

from backbones.base import register_backbone
from backbones.blip import BlipComposer
from backbones.checkpoints import checkpoint_sha256, missing_weights_message, resolve
from backbones.preprocess import ImagePreprocess


class PretrainedBlip:
    name: str
    default_checkpoint: str
    image_size = 384

    @classmethod
    def check(cls, checkpoint: str | None) -> list[str]:
        message = missing_weights_message(resolve(checkpoint, cls.default_checkpoint, cls.name), cls.name)
        return [message] if message else []

    @classmethod
    def load(cls, checkpoint: str | None, device: torch.device, seed: int = 0) -> BlipComposer:
        resolved = resolve(checkpoint, cls.default_checkpoint, cls.name)
        model = BlipForImageTextRetrieval.from_pretrained(resolved.source)
        tokenizer = AutoTokenizer.from_pretrained(resolved.source)
        composer = BlipComposer(
            cls.name, model, tokenizer, ImagePreprocess(cls.image_size), resolved.source,
            checkpoint_sha256(resolved),
        )
        composer.model.to(device).eval()
        return composer


@register_backbone("blip-base")
class BlipBase(PretrainedBlip):
    name = "blip-base"
    default_checkpoint = "Salesforce/blip-itm-base-coco"


@register_backbone("blip-large")
class BlipLarge(PretrainedBlip):
    name = "blip-large"
    default_checkpoint = "Salesforce/blip-itm-large-coco"
