"""Tiny original BLIP / CoVR checkpoints, their key names and shapes written from
BLIP's source (models/vit.py, models/med.py, models/blip_retrieval.py), and a
reference forward pass over those original-layout weights in plain torch ops: what
the conversion tests (tests/test_convert_blip.py, tests/test_checkpoint_files.py)
and the end-to-end loading tests compare against. Nothing is downloaded. The
fixtures `original` (the state dict) and `blip_file` (it saved as BLIP saves) are
defined here (tests/conftest.py loads them as a plugin)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import BlipConfig, BlipForImageTextRetrieval

from backbones.convert import load_converted

IMAGE, PATCH = 32, 16
V_WIDTH, V_LAYERS, V_HEADS, V_MLP = 32, 2, 2, 128  # BLIP's ViT: mlp_ratio 4
T_WIDTH, T_LAYERS, T_HEADS, T_MLP = 32, 2, 2, 128
VOCAB, T_POSITIONS, EMBED, QUEUE = 60, 16, 16, 8
VIT_EPS, BERT_EPS = 1e-6, 1e-12  # BLIP's vit.py and med_config.json


def tiny_config(image_size: int = IMAGE, vision_layers: int = V_LAYERS, vocab: int = VOCAB) -> BlipConfig:
    vision = dict(
        hidden_size=V_WIDTH, intermediate_size=V_MLP, num_hidden_layers=vision_layers,
        num_attention_heads=V_HEADS, image_size=image_size, patch_size=PATCH,
        initializer_range=0.02, layer_norm_eps=VIT_EPS,
    )
    text = dict(
        vocab_size=vocab, hidden_size=T_WIDTH, intermediate_size=T_MLP, num_hidden_layers=T_LAYERS,
        num_attention_heads=T_HEADS, encoder_hidden_size=V_WIDTH, max_position_embeddings=T_POSITIONS,
        pad_token_id=0, bos_token_id=1, sep_token_id=2, layer_norm_eps=BERT_EPS,
    )
    return BlipConfig(vision_config=vision, text_config=text, image_text_hidden_size=EMBED)


# -- the original layout, from BLIP's source ---------------------------------------------


def vit_shapes(prefix: str, image_size: int) -> dict[str, tuple]:
    """models/vit.py VisionTransformer: cls_token, pos_embed, patch_embed.proj, blocks.N, norm."""
    positions = (image_size // PATCH) ** 2 + 1
    shapes = {
        f"{prefix}.cls_token": (1, 1, V_WIDTH),
        f"{prefix}.pos_embed": (1, positions, V_WIDTH),
        f"{prefix}.patch_embed.proj.weight": (V_WIDTH, 3, PATCH, PATCH),
        f"{prefix}.patch_embed.proj.bias": (V_WIDTH,),
    }
    for i in range(V_LAYERS):
        block = f"{prefix}.blocks.{i}"
        shapes |= {
            f"{block}.norm1.weight": (V_WIDTH,), f"{block}.norm1.bias": (V_WIDTH,),
            f"{block}.attn.qkv.weight": (3 * V_WIDTH, V_WIDTH), f"{block}.attn.qkv.bias": (3 * V_WIDTH,),
            f"{block}.attn.proj.weight": (V_WIDTH, V_WIDTH), f"{block}.attn.proj.bias": (V_WIDTH,),
            f"{block}.norm2.weight": (V_WIDTH,), f"{block}.norm2.bias": (V_WIDTH,),
            f"{block}.mlp.fc1.weight": (V_MLP, V_WIDTH), f"{block}.mlp.fc1.bias": (V_MLP,),
            f"{block}.mlp.fc2.weight": (V_WIDTH, V_MLP), f"{block}.mlp.fc2.bias": (V_WIDTH,),
        }
    return shapes | {f"{prefix}.norm.weight": (V_WIDTH,), f"{prefix}.norm.bias": (V_WIDTH,)}


def bert_attention_shapes(prefix: str, key_width: int) -> dict[str, tuple]:
    """models/med.py BertAttention: self.{query,key,value}, output.{dense,LayerNorm}."""
    return {
        f"{prefix}.self.query.weight": (T_WIDTH, T_WIDTH), f"{prefix}.self.query.bias": (T_WIDTH,),
        f"{prefix}.self.key.weight": (T_WIDTH, key_width), f"{prefix}.self.key.bias": (T_WIDTH,),
        f"{prefix}.self.value.weight": (T_WIDTH, key_width), f"{prefix}.self.value.bias": (T_WIDTH,),
        f"{prefix}.output.dense.weight": (T_WIDTH, T_WIDTH), f"{prefix}.output.dense.bias": (T_WIDTH,),
        f"{prefix}.output.LayerNorm.weight": (T_WIDTH,), f"{prefix}.output.LayerNorm.bias": (T_WIDTH,),
    }


def bert_shapes(prefix: str) -> dict[str, tuple]:
    """models/med.py BertModel(add_pooling_layer=False) with cross-attention in every layer."""
    shapes = {
        f"{prefix}.embeddings.word_embeddings.weight": (VOCAB, T_WIDTH),
        f"{prefix}.embeddings.position_embeddings.weight": (T_POSITIONS, T_WIDTH),
        f"{prefix}.embeddings.LayerNorm.weight": (T_WIDTH,),
        f"{prefix}.embeddings.LayerNorm.bias": (T_WIDTH,),
    }
    for i in range(T_LAYERS):
        layer = f"{prefix}.encoder.layer.{i}"
        shapes |= bert_attention_shapes(f"{layer}.attention", T_WIDTH)
        shapes |= bert_attention_shapes(f"{layer}.crossattention", V_WIDTH)
        shapes |= {
            f"{layer}.intermediate.dense.weight": (T_MLP, T_WIDTH), f"{layer}.intermediate.dense.bias": (T_MLP,),
            f"{layer}.output.dense.weight": (T_WIDTH, T_MLP), f"{layer}.output.dense.bias": (T_WIDTH,),
            f"{layer}.output.LayerNorm.weight": (T_WIDTH,), f"{layer}.output.LayerNorm.bias": (T_WIDTH,),
        }
    return shapes


def random_tensor(name: str, shape: tuple, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(shape, generator=generator)
    if "norm" in name.lower() and name.endswith("weight"):
        return 1 + 0.1 * noise  # LayerNorm scales near 1, as trained ones are
    return 0.1 * noise if name.endswith("bias") else 0.3 * noise


def blip_retrieval_state_dict(seed: int = 0, image_size: int = IMAGE) -> dict[str, torch.Tensor]:
    """models/blip_retrieval.py BLIP_Retrieval.state_dict(): the model, its momentum
    copies (independent random values, so taking one for the other shows), queues, temp."""
    heads = {"vision_proj.weight": (EMBED, V_WIDTH), "vision_proj.bias": (EMBED,),
             "text_proj.weight": (EMBED, T_WIDTH), "text_proj.bias": (EMBED,),
             "itm_head.weight": (2, T_WIDTH), "itm_head.bias": (2,)}
    momentum = {"vision_proj_m.weight": (EMBED, V_WIDTH), "vision_proj_m.bias": (EMBED,),
                "text_proj_m.weight": (EMBED, T_WIDTH), "text_proj_m.bias": (EMBED,)}
    shapes = (vit_shapes("visual_encoder", image_size) | bert_shapes("text_encoder") | heads
              | vit_shapes("visual_encoder_m", image_size) | bert_shapes("text_encoder_m") | momentum)
    generator = torch.Generator().manual_seed(seed)
    state = {name: random_tensor(name, shape, generator) for name, shape in shapes.items()}
    positions = torch.arange(T_POSITIONS).expand(1, -1)
    state |= {
        "text_encoder.embeddings.position_ids": positions.clone(),
        "text_encoder_m.embeddings.position_ids": positions.clone(),
        "image_queue": F.normalize(torch.randn(EMBED, QUEUE, generator=generator), dim=0),
        "text_queue": F.normalize(torch.randn(EMBED, QUEUE, generator=generator), dim=0),
        "idx_queue": torch.full((1, QUEUE), -100),
        "ptr_queue": torch.zeros(1, dtype=torch.long),
        "temp": torch.tensor(0.07),
    }
    return state


RETRIEVAL_UNUSED = ("visual_encoder_m.", "text_encoder_m.", "vision_proj_m.", "text_proj_m.")
RETRIEVAL_UNUSED_NAMES = ("image_queue", "text_queue", "idx_queue", "ptr_queue", "temp",
                          "text_encoder.embeddings.position_ids")


def covr_model_state_dict(original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CoVR's BLIPCir (src/model/blip/blip_cir.py) has these modules only: no ITM head,
    no momentum encoders, no queues, temp a float; med.py's position_ids buffer is saved."""
    kept = ("visual_encoder.", "text_encoder.", "vision_proj.", "text_proj.")
    return {key: value for key, value in original.items() if key.startswith(kept)}


def linear(x, w, prefix):
    return x @ w[f"{prefix}.weight"].T + w[f"{prefix}.bias"]


def layer_norm(x, w, prefix, eps):
    return F.layer_norm(x, x.shape[-1:], w[f"{prefix}.weight"], w[f"{prefix}.bias"], eps)


def split_heads(x, heads):
    batch, length, width = x.shape
    return x.reshape(batch, length, heads, width // heads).transpose(1, 2)


def merge_heads(x):
    batch, heads, length, size = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * size)


def vit_attention(x, w, prefix):
    """timm Attention: fused qkv laid out (3, heads, head_dim), then proj."""
    batch, length, width = x.shape
    q, k, v = linear(x, w, f"{prefix}.qkv").reshape(batch, length, 3, V_HEADS, width // V_HEADS).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-2, -1) * (width // V_HEADS) ** -0.5, dim=-1)
    return linear(merge_heads(weights @ v), w, f"{prefix}.proj")


def reference_vit(w, pixels, prefix="visual_encoder"):
    """models/vit.py VisionTransformer.forward: pre-norm blocks, then the final norm."""
    x = F.conv2d(pixels, w[f"{prefix}.patch_embed.proj.weight"], w[f"{prefix}.patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([w[f"{prefix}.cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + w[f"{prefix}.pos_embed"]
    for i in range(V_LAYERS):
        block = f"{prefix}.blocks.{i}"
        x = x + vit_attention(layer_norm(x, w, f"{block}.norm1", VIT_EPS), w, f"{block}.attn")
        hidden = F.gelu(linear(layer_norm(x, w, f"{block}.norm2", VIT_EPS), w, f"{block}.mlp.fc1"))
        x = x + linear(hidden, w, f"{block}.mlp.fc2")
    return layer_norm(x, w, f"{prefix}.norm", VIT_EPS)


def bert_attention(x, source, source_mask, w, prefix):
    """med.py BertAttention: multi-head attention, dense, then post-LN with the residual."""
    q = split_heads(linear(x, w, f"{prefix}.self.query"), T_HEADS)
    k = split_heads(linear(source, w, f"{prefix}.self.key"), T_HEADS)
    v = split_heads(linear(source, w, f"{prefix}.self.value"), T_HEADS)
    scores = q @ k.transpose(-2, -1) / (T_WIDTH // T_HEADS) ** 0.5
    scores = scores.masked_fill(~source_mask.bool()[:, None, None, :], float("-inf"))
    context = merge_heads(torch.softmax(scores, dim=-1) @ v)
    return layer_norm(linear(context, w, f"{prefix}.output.dense") + x, w, f"{prefix}.output.LayerNorm", BERT_EPS)


def reference_bert(w, ids, mask, image_tokens=None, prefix="text_encoder"):
    """med.py BertModel: mode 'text' without image tokens, 'multimodal' with them."""
    positions = torch.arange(ids.shape[1])
    x = w[f"{prefix}.embeddings.word_embeddings.weight"][ids] + w[f"{prefix}.embeddings.position_embeddings.weight"][positions]
    x = layer_norm(x, w, f"{prefix}.embeddings.LayerNorm", BERT_EPS)
    for i in range(T_LAYERS):
        layer = f"{prefix}.encoder.layer.{i}"
        x = bert_attention(x, x, mask, w, f"{layer}.attention")
        if image_tokens is not None:
            image_mask = torch.ones(image_tokens.shape[:2], dtype=torch.long)
            x = bert_attention(x, image_tokens, image_mask, w, f"{layer}.crossattention")
        hidden = F.gelu(linear(x, w, f"{layer}.intermediate.dense"))
        x = layer_norm(linear(hidden, w, f"{layer}.output.dense") + x, w, f"{layer}.output.LayerNorm", BERT_EPS)
    return x


def embed(hidden_cls, w, projection):
    return F.normalize(linear(hidden_cls, w, projection), dim=-1)


def inputs(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(2, 3, IMAGE, IMAGE, generator=generator)
    ids = torch.randint(3, VOCAB, (2, 7), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0  # the second caption is shorter: padding must be masked out
    ids[1, 4:] = 0
    return pixels, ids, mask


def converted_model(state_dict, left_at_init=()) -> BlipForImageTextRetrieval:
    torch.manual_seed(0)
    model = BlipForImageTextRetrieval(tiny_config()).eval()
    load_converted(model, state_dict, left_at_init=left_at_init)
    return model


# -- 1-2: the conversion keeps every embedding the harness computes -----------------------


@pytest.fixture(scope="module")
def original() -> dict[str, torch.Tensor]:
    return blip_retrieval_state_dict()


@pytest.fixture()
def blip_file(tmp_path, original):
    """As BLIP's train_retrieval.py saves: weights under "model" beside plain data."""
    path = tmp_path / "model_tiny_retrieval_coco.pth"
    torch.save({"model": original, "config": {"image_size": IMAGE, "vit": "tiny"}, "epoch": 5}, path)
    return path
