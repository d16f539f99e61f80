"""`blip-tiny`: BLIP's retrieval architecture at toy size (about 1M parameters,
64 px images), built from a config with an offline tokenizer, so the whole
pipeline trains and evaluates on 2 CPU cores in minutes.

Without --checkpoint it starts from random weights (seeded); with one it loads a
directory written by `BlipComposer.save`. Sizes follow the recipe measured in
shared/ENVIRONMENT.md (hidden 128, 2+2 layers, patch 16, projection 64).
"""

from __future__ import annotations

import string
from collections import OrderedDict
from pathlib import Path

import torch
from transformers import BertTokenizer, BlipConfig, BlipForImageTextRetrieval

from backbones.base import LoadOptions, register_backbone
from backbones.blip import ENC_TOKEN, BlipComposer
from backbones.checkpoints import directory_sha256, resolve
from backbones.integrity import from_pretrained_strict
from backbones.preprocess import ImagePreprocess

IMAGE_SIZE = 64
# Words the tokenizer keeps whole: those of the generated suites' captions (a test
# checks they cover harness/suites/scenes.py's VOCABULARY). The file is the
# backbone's own data; its order fixes the token ids, and so the seeded model.
WORDS = tuple((Path(__file__).parent / "tiny_words.txt").read_text().split())
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", ENC_TOKEN)


def tiny_vocabulary() -> list[str]:
    """Special tokens, the whole words, then single characters and ##-pieces so
    any lowercase word (a CIRR caption, say) splits into pieces instead of [UNK]."""
    chars = list(string.ascii_lowercase + string.digits)
    pieces = [*SPECIAL_TOKENS, *WORDS, *chars, *("##" + c for c in chars)]
    pieces += list(string.punctuation)
    return list(OrderedDict.fromkeys(pieces))


def tiny_tokenizer() -> BertTokenizer:
    vocab = OrderedDict((token, i) for i, token in enumerate(tiny_vocabulary()))
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": [ENC_TOKEN]})
    return tokenizer


def tiny_config(vocab_size: int) -> BlipConfig:
    vision = dict(
        hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        image_size=IMAGE_SIZE, patch_size=16,
        initializer_range=0.02,  # the BLIP default (1e-10) gives every image the same vector
    )
    text = dict(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, encoder_hidden_size=128, max_position_embeddings=128,
        pad_token_id=0, bos_token_id=SPECIAL_TOKENS.index("[DEC]"), sep_token_id=3,
    )
    return BlipConfig(vision_config=vision, text_config=text, image_text_hidden_size=64)


def build_random(seed: int = 0) -> BlipComposer:
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    model = BlipForImageTextRetrieval(tiny_config(len(tokenizer)))
    return BlipComposer(
        "blip-tiny", model, tokenizer, ImagePreprocess(IMAGE_SIZE), "random-init", f"random-init-seed{seed}"
    )


@register_backbone("blip-tiny")
class BlipTiny:
    @classmethod
    def check(cls, options: LoadOptions) -> list[str]:
        if options.checkpoint is not None and resolve(options.checkpoint, None, "blip-tiny").kind != "directory":
            return ["blip-tiny loads transformers directories written by a blip-tiny run, "
                    f"not {options.checkpoint}"]
        return []

    @classmethod
    def load(cls, options: LoadOptions, device: torch.device) -> BlipComposer:
        if options.checkpoint is None:
            composer = build_random(options.seed)
        else:
            source = resolve(options.checkpoint, None, "blip-tiny").source
            model = from_pretrained_strict(BlipForImageTextRetrieval, source)
            tokenizer = BertTokenizer.from_pretrained(source)
            composer = BlipComposer(
                "blip-tiny", model, tokenizer, ImagePreprocess(IMAGE_SIZE), source, directory_sha256(source)
            )
        composer.model.to(device).eval()
        return composer
