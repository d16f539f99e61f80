"""`clip-tiny`: CLIP's dual-encoder architecture at toy size (64 px images, hidden
128, 2+2 layers, projection 64), built from a config with blip-tiny's offline
tokenizer, so that the zero-shot composers run on 2 CPU cores in minutes.

Without --checkpoint it starts from random weights (seeded), which a run first
pre-trains contrastively on the generated image-caption pairs
(harness/training/clip_pretraining.py); with one it loads a directory a clip-tiny
run saved (CLIP, tokenizer and the composer's weights).
"""

from __future__ import annotations

import torch
from transformers import BertTokenizer, CLIPConfig, CLIPModel

from backbones.base import LoadOptions, register_backbone
from backbones.blip_tiny import IMAGE_SIZE, SPECIAL_TOKENS, tiny_tokenizer
from backbones.checkpoints import directory_sha256, resolve
from backbones.clip import ClipBackbone, build_composer, unused_options
from backbones.clip_preprocess import ClipPreprocess
from backbones.composers import DEFAULT_COMPOSER
from backbones.integrity import from_pretrained_strict


def tiny_clip_config(vocab_size: int) -> CLIPConfig:
    vision = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                  image_size=IMAGE_SIZE, patch_size=16)
    # The text encoder pools at the first [SEP] (its eos; id 2 would select transformers'
    # legacy argmax-of-ids pooling, which a BERT vocabulary breaks).
    text = dict(vocab_size=vocab_size, hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, pad_token_id=SPECIAL_TOKENS.index("[PAD]"),
                bos_token_id=SPECIAL_TOKENS.index("[CLS]"), eos_token_id=SPECIAL_TOKENS.index("[SEP]"))
    return CLIPConfig(vision_config=vision, text_config=text, projection_dim=64)


def build_random(seed: int, composer: str) -> ClipBackbone:
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    clip = CLIPModel(tiny_clip_config(len(tokenizer)))
    return ClipBackbone("clip-tiny", clip, tokenizer, ClipPreprocess(IMAGE_SIZE),
                        build_composer(composer, clip.config.projection_dim,
                                       text_width=clip.config.text_config.hidden_size), "random-init",
                        f"random-init-seed{seed}")


@register_backbone("clip-tiny")
class ClipTiny:
    composers = True  # takes --composer

    @classmethod
    def check(cls, options: LoadOptions) -> list[str]:
        problems = unused_options(options, "clip-tiny")
        if problems:
            return problems
        if options.checkpoint is not None and resolve(options.checkpoint, None, "clip-tiny").kind != "directory":
            return [f"clip-tiny loads transformers directories written by a clip-tiny run, not {options.checkpoint}"]
        return []

    @classmethod
    def load(cls, options: LoadOptions, device: torch.device) -> ClipBackbone:
        composer = options.composer or DEFAULT_COMPOSER
        if options.checkpoint is None:
            backbone = build_random(options.seed, composer)
        else:
            source = resolve(options.checkpoint, None, "clip-tiny").source
            clip = from_pretrained_strict(CLIPModel, source)
            backbone = ClipBackbone("clip-tiny", clip, BertTokenizer.from_pretrained(source), ClipPreprocess(IMAGE_SIZE),
                                    build_composer(composer, clip.config.projection_dim, source,
                                                   clip.config.text_config.hidden_size), source,
                                    directory_sha256(source))
        backbone.model.to(device).eval()
        return backbone
