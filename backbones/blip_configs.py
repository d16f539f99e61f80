"""Architectures of the original BLIP retrieval checkpoints, as transformers
configs, for converting `.pth` / `.ckpt` files that carry weights only.

ViT-B/16 (base) and ViT-L/16 (large) at 384 px, BERT-base text encoder with
cross-attention into the ViT width, 256-d projections. BLIP's ViT uses
LayerNorm eps 1e-6 (timm); transformers' default is 1e-5, so it is set here to
reproduce the original forward exactly.
"""

from __future__ import annotations

from transformers import BlipConfig

VISION = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}


def blip_config(size: str, image_size: int = 384) -> BlipConfig:
    if size not in VISION:
        raise ValueError(f"BLIP size must be one of {', '.join(VISION)}, got {size!r}")
    vision = dict(VISION[size], image_size=image_size, patch_size=16, layer_norm_eps=1e-6)
    text = dict(
        vocab_size=30524,  # bert-base-uncased + [DEC] + [ENC]
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        encoder_hidden_size=VISION[size]["hidden_size"], max_position_embeddings=512,
        pad_token_id=0, bos_token_id=30522, sep_token_id=102, layer_norm_eps=1e-12,
    )
    return BlipConfig(vision_config=vision, text_config=text, image_text_hidden_size=256)
