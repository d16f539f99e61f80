"""A tiny LAVIS BLIP-2 (Blip2Qformer) checkpoint, its key names and shapes written from
LAVIS' modules (eva_vit.py VisionTransformer, blip2_models/Qformer.py BertLMHeadModel),
the transformers name each key must get, and LAVIS' EVA ViT forward pass in plain
torch ops. Nothing is downloaded."""

from __future__ import annotations

import torch
import torch.nn.functional as F

LAVIS_VOCAB = 40


def _fixed_shapes(config) -> dict[str, tuple[int, ...]]:
    """Every key outside the repeated ViT blocks and Q-Former layers."""
    vc, qc = config.vision_config, config.qformer_config
    e, h, d, p = vc.hidden_size, qc.hidden_size, config.image_text_hidden_size, vc.patch_size
    n_pos = (vc.image_size // p) ** 2 + 1
    return {
        "visual_encoder.cls_token": (1, 1, e),
        "visual_encoder.pos_embed": (1, n_pos, e),
        "visual_encoder.patch_embed.proj.weight": (e, 3, p, p),
        "visual_encoder.patch_embed.proj.bias": (e,),
        "ln_vision.weight": (e,), "ln_vision.bias": (e,),
        "query_tokens": (1, config.num_query_tokens, h),
        "Qformer.bert.embeddings.word_embeddings.weight": (qc.vocab_size, h),
        "Qformer.bert.embeddings.position_embeddings.weight": (qc.max_position_embeddings, h),
        "Qformer.bert.embeddings.LayerNorm.weight": (h,),
        "Qformer.bert.embeddings.LayerNorm.bias": (h,),
        "Qformer.cls.predictions.bias": (qc.vocab_size,),
        "Qformer.cls.predictions.transform.dense.weight": (h, h),
        "Qformer.cls.predictions.transform.dense.bias": (h,),
        "Qformer.cls.predictions.transform.LayerNorm.weight": (h,),
        "Qformer.cls.predictions.transform.LayerNorm.bias": (h,),
        "Qformer.cls.predictions.decoder.weight": (qc.vocab_size, h),
        "Qformer.cls.predictions.decoder.bias": (qc.vocab_size,),
        "vision_proj.weight": (d, h), "vision_proj.bias": (d,),
        "text_proj.weight": (d, h), "text_proj.bias": (d,),
        "itm_head.weight": (2, h), "itm_head.bias": (2,),
        "temp": (),
    }


def _vit_block_shapes(config, i: int) -> dict[str, tuple[int, ...]]:
    vc = config.vision_config
    e, b = vc.hidden_size, f"visual_encoder.blocks.{i}."
    return {
        b + "norm1.weight": (e,), b + "norm1.bias": (e,),
        b + "attn.qkv.weight": (3 * e, e), b + "attn.q_bias": (e,), b + "attn.v_bias": (e,),
        b + "attn.proj.weight": (e, e), b + "attn.proj.bias": (e,),
        b + "norm2.weight": (e,), b + "norm2.bias": (e,),
        b + "mlp.fc1.weight": (vc.intermediate_size, e), b + "mlp.fc1.bias": (vc.intermediate_size,),
        b + "mlp.fc2.weight": (e, vc.intermediate_size), b + "mlp.fc2.bias": (e,),
    }


def _qformer_layer_shapes(config, i: int) -> dict[str, tuple[int, ...]]:
    e, qc = config.vision_config.hidden_size, config.qformer_config
    h, b = qc.hidden_size, f"Qformer.bert.encoder.layer.{i}."
    shapes: dict[str, tuple[int, ...]] = {}
    attentions = ["attention"] + (["crossattention"] if i % qc.cross_attention_frequency == 0 else [])
    for att in attentions:
        kv_in = e if att == "crossattention" else h
        shapes |= {
            b + f"{att}.self.query.weight": (h, h), b + f"{att}.self.query.bias": (h,),
            b + f"{att}.self.key.weight": (h, kv_in), b + f"{att}.self.key.bias": (h,),
            b + f"{att}.self.value.weight": (h, kv_in), b + f"{att}.self.value.bias": (h,),
            b + f"{att}.output.dense.weight": (h, h), b + f"{att}.output.dense.bias": (h,),
            b + f"{att}.output.LayerNorm.weight": (h,), b + f"{att}.output.LayerNorm.bias": (h,),
        }
    for suffix in ("", "_query"):
        shapes |= {
            b + f"intermediate{suffix}.dense.weight": (qc.intermediate_size, h),
            b + f"intermediate{suffix}.dense.bias": (qc.intermediate_size,),
            b + f"output{suffix}.dense.weight": (h, qc.intermediate_size),
            b + f"output{suffix}.dense.bias": (h,),
            b + f"output{suffix}.LayerNorm.weight": (h,),
            b + f"output{suffix}.LayerNorm.bias": (h,),
        }
    return shapes


def lavis_state_dict(config, seed=0) -> dict[str, torch.Tensor]:
    """A LAVIS Blip2Qformer state dict with random values of LAVIS' names and shapes."""
    g = torch.Generator().manual_seed(seed)
    shapes = _fixed_shapes(config)
    for i in range(config.vision_config.num_hidden_layers):
        shapes |= _vit_block_shapes(config, i)
    for i in range(config.qformer_config.num_hidden_layers):
        shapes |= _qformer_layer_shapes(config, i)
    state = {}
    for key, shape in shapes.items():
        scale = 0.5 if key.endswith(("cls_token", "pos_embed")) else 0.1
        tensor = torch.randn(shape, generator=g) * scale
        if "norm" in key.lower() and key.endswith("weight"):
            tensor = 1.0 + tensor
        state[key] = tensor
    state["Qformer.bert.embeddings.position_ids"] = torch.arange(config.qformer_config.max_position_embeddings)[None]
    return state


def expected_hf_key(key: str) -> str:
    """The transformers name of a LAVIS key, written from transformers' modeling_blip_2 names."""
    fixed = {
        "visual_encoder.cls_token": "vision_model.embeddings.class_embedding",
        "visual_encoder.pos_embed": "vision_model.embeddings.position_embedding",
        "ln_vision.weight": "vision_model.post_layernorm.weight",
        "ln_vision.bias": "vision_model.post_layernorm.bias",
        "Qformer.bert.embeddings.LayerNorm.weight": "qformer.layernorm.weight",
        "Qformer.bert.embeddings.LayerNorm.bias": "qformer.layernorm.bias",
    }
    if key in fixed:
        return fixed[key]
    for old, new in [
        ("visual_encoder.patch_embed.proj.", "vision_model.embeddings.patch_embedding."),
        ("visual_encoder.blocks.", "vision_model.encoder.layers."),
        (".norm1.", ".layer_norm1."), (".norm2.", ".layer_norm2."),
        (".attn.qkv.", ".self_attn.qkv."), (".attn.proj.", ".self_attn.projection."),
        ("Qformer.bert.embeddings.", "embeddings."), ("Qformer.bert.encoder.", "qformer.encoder."),
        ("attention.self.", "attention.attention."),
        ("vision_proj.", "vision_projection."), ("text_proj.", "text_projection."),
    ]:
        key = key.replace(old, new)
    return key


def eva_reference_forward(original, config, px):
    """LAVIS' EVA ViT (Block: x + attn(norm1(x)); x + mlp(norm2(x)); LayerNorm eps 1e-6,
    q_bias / zero k bias / v_bias) followed by ln_vision (torch's default eps 1e-5)."""
    vc = config.vision_config
    e, heads = vc.hidden_size, vc.num_attention_heads
    x = F.conv2d(px, original["visual_encoder.patch_embed.proj.weight"],
                 original["visual_encoder.patch_embed.proj.bias"], stride=vc.patch_size)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([original["visual_encoder.cls_token"].expand(x.shape[0], -1, -1), x], dim=1)
    x = x + original["visual_encoder.pos_embed"]
    b, n, _ = x.shape
    for i in range(vc.num_hidden_layers):
        w = {k[len(f"visual_encoder.blocks.{i}."):]: v for k, v in original.items()
             if k.startswith(f"visual_encoder.blocks.{i}.")}
        y = F.layer_norm(x, (e,), w["norm1.weight"], w["norm1.bias"], eps=1e-6)
        bias = torch.cat([w["attn.q_bias"], torch.zeros_like(w["attn.v_bias"]), w["attn.v_bias"]])
        qkv = F.linear(y, w["attn.qkv.weight"], bias).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q * (e // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(b, n, e)
        x = x + F.linear(y, w["attn.proj.weight"], w["attn.proj.bias"])
        y = F.layer_norm(x, (e,), w["norm2.weight"], w["norm2.bias"], eps=1e-6)
        y = F.linear(F.gelu(F.linear(y, w["mlp.fc1.weight"], w["mlp.fc1.bias"])), w["mlp.fc2.weight"], w["mlp.fc2.bias"])
        x = x + y
    return F.layer_norm(x, (e,), original["ln_vision.weight"], original["ln_vision.bias"], eps=1e-5)
