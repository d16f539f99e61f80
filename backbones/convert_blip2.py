"""LAVIS BLIP-2 checkpoints (e.g. `blip2_finetune_coco.pth`, what CoVR-2 starts from) into
transformers' Blip2ForImageTextRetrieval.

Original layout (LAVIS lavis/models/eva_vit.py, blip2_qformer.py, blip2_models/Qformer.py):

| LAVIS | transformers |
|---|---|
| visual_encoder.cls_token / pos_embed | vision_model.embeddings.class_embedding / position_embedding |
| visual_encoder.patch_embed.proj.* | vision_model.embeddings.patch_embedding.* |
| visual_encoder.blocks.N.norm1 / norm2 | vision_model.encoder.layers.N.layer_norm1 / layer_norm2 |
| visual_encoder.blocks.N.attn.qkv.weight | ...layers.N.self_attn.qkv.weight |
| visual_encoder.blocks.N.attn.q_bias, v_bias | ...layers.N.self_attn.qkv.bias = cat(q_bias, 0, v_bias) |
| visual_encoder.blocks.N.attn.proj.* | ...layers.N.self_attn.projection.* |
| visual_encoder.blocks.N.mlp.fc1 / fc2 | ...layers.N.mlp.fc1 / fc2 |
| ln_vision.* | vision_model.post_layernorm.* |
| Qformer.bert.embeddings.word_embeddings / position_embeddings | embeddings.word_embeddings / position_embeddings |
| Qformer.bert.embeddings.LayerNorm | qformer.layernorm |
| Qformer.bert.encoder.layer.N.{attention,crossattention}.self.* | qformer.encoder.layer.N.{attention,crossattention}.attention.* |
| Qformer.bert.encoder.layer.N.*.output, intermediate(_query), output(_query) | qformer.encoder.layer.N.(same names) |
| query_tokens, itm_head | query_tokens, itm_head |
| vision_proj / text_proj | vision_projection / text_projection |
| Qformer.cls.* (MLM head), temp, Qformer.bert.embeddings.position_ids | dropped |

EVA's attention has no key bias: LAVIS builds the fused bias cat(q_bias, zeros, v_bias)
at every forward; transformers stores that fused vector as qkv.bias. Two numerical
differences remain in the port itself: LAVIS' ln_vision uses eps 1e-5 where
transformers' post_layernorm uses the vision config's 1e-6; nothing else changes.
Position embeddings are not interpolated: a 224 px checkpoint needs a 224 px config.
"""

from __future__ import annotations

import re

import torch
from transformers import Blip2Config, Blip2ForImageTextRetrieval

_DROPPED = (
    re.compile(r"^Qformer\.cls\."),
    re.compile(r"^temp$"),
    re.compile(r"^Qformer\.bert\.embeddings\.position_ids$"),
)

_VISION_BLOCK = {
    "norm1": "layer_norm1",
    "norm2": "layer_norm2",
    "attn.qkv.weight": "self_attn.qkv.weight",
    "attn.proj": "self_attn.projection",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}

_FIXED = {
    "visual_encoder.cls_token": "vision_model.embeddings.class_embedding",
    "visual_encoder.pos_embed": "vision_model.embeddings.position_embedding",
    "visual_encoder.patch_embed.proj.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual_encoder.patch_embed.proj.bias": "vision_model.embeddings.patch_embedding.bias",
    "ln_vision.weight": "vision_model.post_layernorm.weight",
    "ln_vision.bias": "vision_model.post_layernorm.bias",
    "query_tokens": "query_tokens",
    "Qformer.bert.embeddings.word_embeddings.weight": "embeddings.word_embeddings.weight",
    "Qformer.bert.embeddings.position_embeddings.weight": "embeddings.position_embeddings.weight",
    "Qformer.bert.embeddings.LayerNorm.weight": "qformer.layernorm.weight",
    "Qformer.bert.embeddings.LayerNorm.bias": "qformer.layernorm.bias",
}

_HEADS = {"vision_proj": "vision_projection", "text_proj": "text_projection", "itm_head": "itm_head"}

_BLOCK_KEY = re.compile(r"^visual_encoder\.blocks\.(\d+)\.(.+)$")
_QFORMER_LAYER_KEY = re.compile(
    r"^Qformer\.bert\.encoder\.layer\.(\d+)\."
    r"(attention|crossattention|intermediate|output|intermediate_query|output_query)\.(.+)$"
)


def _rename(key: str) -> str | None:
    """The transformers key for a LAVIS key, or None if the key is not a plain rename."""
    if key in _FIXED:
        return _FIXED[key]
    head, _, leaf = key.partition(".")
    if head in _HEADS and leaf in ("weight", "bias"):
        return f"{_HEADS[head]}.{leaf}"
    match = _BLOCK_KEY.match(key)
    if match:
        layer, rest = match.groups()
        for original, renamed in _VISION_BLOCK.items():
            if rest == original or rest.startswith(original + "."):
                return f"vision_model.encoder.layers.{layer}.{renamed}{rest[len(original):]}"
        return None
    match = _QFORMER_LAYER_KEY.match(key)
    if match:
        layer, module, rest = match.groups()
        if module in ("attention", "crossattention") and rest.startswith("self."):
            rest = "attention." + rest[len("self."):]
        return f"qformer.encoder.layer.{layer}.{module}.{rest}"
    return None


def lavis_blip2_to_transformers(
    original: dict[str, torch.Tensor], config: Blip2Config, not_stored: tuple[str, ...] = ()
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Convert a LAVIS BLIP-2 (Blip2Qformer / blip2_feature_extractor) state dict.

    `original` is the checkpoint's state dict (or the checkpoint itself, with the state dict
    under "model"). Returns (state_dict for Blip2ForImageTextRetrieval(config), dropped LAVIS
    keys). Raises ValueError on a key it does not know, a missing weight or a shape that
    does not fit the config: nothing is dropped or filled in silently. `not_stored` names
    model keys the format never holds (CoVR-2's .ckpt has no ITM head): they may be missing."""
    if "model" in original and isinstance(original["model"], dict):
        original = original["model"]
    converted: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    unknown: list[str] = []
    q_biases: dict[str, torch.Tensor] = {}
    v_biases: dict[str, torch.Tensor] = {}
    for key, tensor in original.items():
        if any(pattern.match(key) for pattern in _DROPPED):
            dropped.append(key)
            continue
        block = _BLOCK_KEY.match(key)
        if block and block.group(2) in ("attn.q_bias", "attn.v_bias"):
            target = q_biases if block.group(2) == "attn.q_bias" else v_biases
            target[block.group(1)] = tensor
            continue
        renamed = _rename(key)
        if renamed is None:
            unknown.append(key)
        else:
            converted[renamed] = tensor
    if unknown:
        raise ValueError(f"unknown LAVIS BLIP-2 keys (not converted): {sorted(unknown)[:10]}")
    if q_biases.keys() != v_biases.keys():
        raise ValueError(f"EVA blocks with q_bias but no v_bias or the reverse: "
                         f"{sorted(q_biases.keys() ^ v_biases.keys())}")
    for layer, q_bias in q_biases.items():
        v_bias = v_biases[layer]
        fused = torch.cat((q_bias, torch.zeros_like(v_bias), v_bias))
        converted[f"vision_model.encoder.layers.{layer}.self_attn.qkv.bias"] = fused

    with torch.device("meta"):
        expected = Blip2ForImageTextRetrieval(config).state_dict()
    missing = sorted(expected.keys() - converted.keys() - set(not_stored))
    extra = sorted(converted.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & converted.keys()
                   if tuple(expected[k].shape) != tuple(converted[k].shape))
    if missing or extra or wrong:
        details = [f"missing {missing[:5]} ({len(missing)})" if missing else "",
                   f"not in the model {extra[:5]} ({len(extra)})" if extra else "",
                   "shapes " + ", ".join(f"{k}: {tuple(converted[k].shape)} vs "
                                         f"{tuple(expected[k].shape)}" for k in wrong[:5])
                   if wrong else ""]
        raise ValueError("LAVIS checkpoint does not fit the BLIP-2 config: "
                         + "; ".join(d for d in details if d))
    return converted, sorted(dropped)


def lavis_coco_config() -> Blip2Config:
    """Blip2Config of LAVIS' blip2_finetune_coco.pth: EVA ViT-g (1408 wide, 39 blocks, 16
    heads, mlp 6144, patch 14) at 364 px, BERT-base Q-Former (vocab 30522 + [DEC]) with
    cross-attention every 2nd layer, 32 query tokens, 256-d projections."""
    return Blip2Config(
        vision_config=dict(
            hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
            image_size=364, patch_size=14, layer_norm_eps=1e-6, qkv_bias=True,
        ),
        qformer_config=dict(
            vocab_size=30523, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
            intermediate_size=3072, cross_attention_frequency=2, encoder_hidden_size=1408,
            use_qformer_text_input=True,
        ),
        num_query_tokens=32, image_text_hidden_size=256,
    )
