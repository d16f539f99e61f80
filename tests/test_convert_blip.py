"""Original BLIP / CoVR checkpoints -> BlipForImageTextRetrieval (backbones/convert.py).

Nothing is downloaded: each test builds a tiny random checkpoint in the ORIGINAL
layout, its key names written from BLIP's source (models/vit.py, models/med.py,
models/blip_retrieval.py), and checks the conversion against a reference forward
pass computed here, with plain torch ops, from the original-layout weights.
"""

from __future__ import annotations

import hashlib
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from transformers import BlipConfig, BlipForImageTextRetrieval

from backbones.convert import (
    FORMATS,
    blip_to_transformers,
    config_notes,
    convert_checkpoint,
    file_sha256,
    load_converted,
    load_original_state_dict,
)
from harness.errors import HarnessError

torch.set_num_threads(1)

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


@pytest.fixture(scope="module")
def original() -> dict[str, torch.Tensor]:
    return blip_retrieval_state_dict()


@pytest.fixture()
def blip_file(tmp_path, original):
    """As BLIP's train_retrieval.py saves: weights under "model" beside plain data."""
    path = tmp_path / "model_tiny_retrieval_coco.pth"
    torch.save({"model": original, "config": {"image_size": IMAGE, "vit": "tiny"}, "epoch": 5}, path)
    return path


# -- a reference forward from the original-layout weights -----------------------------


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


def test_image_embedding_matches_the_original_vit(blip_file, original):
    state_dict, report = convert_checkpoint(blip_file, "blip", tiny_config())
    assert report.ok and not report.left_at_init and not report.notes, report
    model = converted_model(state_dict)
    pixels, _, _ = inputs()
    with torch.no_grad():
        tokens = model.vision_model(pixel_values=pixels).last_hidden_state
        got = F.normalize(model.vision_proj(tokens[:, 0]), dim=-1)
        want_tokens = reference_vit(original, pixels)
    torch.testing.assert_close(tokens, want_tokens, atol=1e-5, rtol=0)
    torch.testing.assert_close(got, embed(want_tokens[:, 0], original, "vision_proj"), atol=1e-5, rtol=0)


def test_text_embedding_matches_the_original_bert(blip_file, original):
    model = converted_model(convert_checkpoint(blip_file, "blip", tiny_config())[0])
    _, ids, mask = inputs()
    with torch.no_grad():
        hidden = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        got = F.normalize(model.text_proj(hidden[:, 0]), dim=-1)
        want = reference_bert(original, ids, mask)
    torch.testing.assert_close(got, embed(want[:, 0], original, "text_proj"), atol=1e-5, rtol=0)


def test_composed_query_matches_the_original_cross_attention(blip_file, original):
    model = converted_model(convert_checkpoint(blip_file, "blip", tiny_config())[0])
    pixels, ids, mask = inputs()
    with torch.no_grad():
        tokens = model.vision_model(pixel_values=pixels).last_hidden_state
        image_mask = torch.ones(tokens.shape[:2], dtype=torch.long)
        hidden = model.text_encoder(
            input_ids=ids, attention_mask=mask, encoder_hidden_states=tokens, encoder_attention_mask=image_mask
        ).last_hidden_state
        got = F.normalize(model.text_proj(hidden[:, 0]), dim=-1)
        want = reference_bert(original, ids, mask, image_tokens=reference_vit(original, pixels))
    torch.testing.assert_close(got, embed(want[:, 0], original, "text_proj"), atol=1e-5, rtol=0)


def test_text_side_tensors_are_copied_unchanged(original):
    converted = blip_to_transformers(original, tiny_config()).state_dict
    text_keys = [key for key in original if key.startswith(("text_encoder.", "vision_proj.", "text_proj.", "itm_head."))]
    text_keys.remove("text_encoder.embeddings.position_ids")
    assert sum(".crossattention." in key for key in text_keys) == T_LAYERS * 10
    for key in text_keys:
        assert torch.equal(converted[key], original[key]), key


def test_dropped_keys_are_exactly_what_retrieval_never_reads(original):
    dropped = blip_to_transformers(original, tiny_config()).dropped
    want = [key for key in original if key.startswith(RETRIEVAL_UNUSED) or key in RETRIEVAL_UNUSED_NAMES]
    assert sorted(dropped) == sorted(want)
    assert "text_encoder_m.encoder.layer.0.crossattention.self.key.weight" in dropped


def test_bare_state_dict_reads_as_blip_format(tmp_path, original):
    path = tmp_path / "bare.pth"
    torch.save(original, path)
    assert load_original_state_dict(path, "blip").keys() == original.keys()


# -- 3: CoVR's Lightning Fabric .ckpt --------------------------------------------------------


class CosineSchedule:
    """Stands for CoVR's src/tools/scheduler.py class, which Fabric pickles whole."""

    def __init__(self):
        self.min_lr, self.init_lr, self.decay_rate, self.max_epochs = 0, 1e-5, 0.05, 5


@pytest.fixture()
def covr_schedule_module(monkeypatch):
    """Make the stand-in picklable under CoVR's module path, src.tools.scheduler."""
    for name in ("src", "src.tools", "src.tools.scheduler"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setattr(CosineSchedule, "__module__", "src.tools.scheduler")
    sys.modules["src.tools.scheduler"].CosineSchedule = CosineSchedule
    return CosineSchedule


def save_covr_ckpt(path, model_state, schedule_class):
    """As CoVR's train.py: fabric.save(path, {"epoch", "model", "optimizer", "scheduler"})."""
    optimizer = {"state": {}, "param_groups": [{"lr": 1e-5, "weight_decay": 0.05, "params": [0, 1]}]}
    torch.save({"epoch": 4, "model": model_state, "optimizer": optimizer, "scheduler": schedule_class()}, path)


@pytest.mark.parametrize("prefix", ["", "module."])  # CoVR's load_checkpoint strips "module."
def test_covr_ckpt_converts_like_the_blip_checkpoint(tmp_path, original, blip_file, covr_schedule_module, prefix):
    path = tmp_path / "ckpt_4.ckpt"
    model_state = {prefix + key: value for key, value in covr_model_state_dict(original).items()}
    save_covr_ckpt(path, model_state, covr_schedule_module)

    covr, report = convert_checkpoint(path, "covr", tiny_config())
    blip, _ = convert_checkpoint(blip_file, "blip", tiny_config())

    assert report.ok and report.left_at_init == ["itm_head.weight", "itm_head.bias"], report
    assert report.dropped == ["text_encoder.embeddings.position_ids"]
    assert covr.keys() == blip.keys() - {"itm_head.weight", "itm_head.bias"}
    for key in covr:
        assert torch.equal(covr[key], blip[key]), key
    pixels, _, _ = inputs()
    with torch.no_grad():
        got = converted_model(covr, report.left_at_init).vision_model(pixel_values=pixels).last_hidden_state
        want = converted_model(blip).vision_model(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_covr_ckpt_needs_its_itm_head_named_as_left_at_init(tmp_path, original, covr_schedule_module):
    path = tmp_path / "ckpt_4.ckpt"
    save_covr_ckpt(path, covr_model_state_dict(original), covr_schedule_module)
    state_dict, _ = convert_checkpoint(path, "covr", tiny_config())
    with pytest.raises(HarnessError, match=r"missing \(2\): itm_head.bias, itm_head.weight"):
        converted_model(state_dict)


def test_covr_ckpt_read_as_blip_format_is_refused_with_a_hint(tmp_path, original, covr_schedule_module):
    path = tmp_path / "ckpt_4.ckpt"
    save_covr_ckpt(path, covr_model_state_dict(original), covr_schedule_module)
    with pytest.raises(HarnessError, match="src.tools.scheduler.CosineSchedule") as caught:
        load_original_state_dict(path, "blip")
    assert "meant to be 'covr'" in str(caught.value)


def test_covr_ckpt_without_model_entry_is_refused(tmp_path, original):
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"model." + key: value for key, value in original.items()}}, path)
    with pytest.raises(HarnessError, match=r"no 'model' entry \(top-level keys: state_dict\)"):
        load_original_state_dict(path, "covr")


# -- 4: a checkpoint that does not fit ----------------------------------------------------


def test_missing_and_extra_keys_are_named(tmp_path, original):
    broken = dict(original)
    del broken["visual_encoder.blocks.1.mlp.fc2.bias"]
    broken["text_encoder.pooler.dense.weight"] = torch.zeros(T_WIDTH, T_WIDTH)
    path = tmp_path / "broken.pth"
    torch.save({"model": broken}, path)

    state_dict, report = convert_checkpoint(path, "blip", tiny_config())
    assert report.missing == ["vision_model.encoder.layers.1.mlp.fc2.bias"]
    assert report.unexpected == ["text_encoder.pooler.dense.weight"]
    with pytest.raises(HarnessError) as caught:
        converted_model(state_dict)
    message = str(caught.value)
    assert "missing (1): vision_model.encoder.layers.1.mlp.fc2.bias" in message
    assert "unexpected (1): text_encoder.pooler.dense.weight" in message
    assert "checkpoint format" in message and "backbone" in message


def test_wrong_backbone_size_is_named(original):
    converted = blip_to_transformers(original, tiny_config()).state_dict
    deeper = BlipForImageTextRetrieval(tiny_config(vision_layers=3, vocab=VOCAB + 1))
    with pytest.raises(HarnessError) as caught:
        load_converted(deeper, converted)
    message = str(caught.value)
    assert "missing (12): vision_model.encoder.layers.2." in message and "... and 2 more" in message
    assert "text_encoder.embeddings.word_embeddings.weight: checkpoint (60, 32) vs model (61, 32)" in message


# -- 5: files that are not plain weights ----------------------------------------------------

EXECUTED: list[str] = []


def record_execution(tag: str) -> str:
    EXECUTED.append(tag)
    return tag


class Payload:
    """Unpickling this would call record_execution: proof that code ran."""

    def __reduce__(self):
        return (record_execution, ("payload ran",))


@pytest.mark.parametrize("fmt", FORMATS)
def test_pickled_objects_are_refused_without_running_them(tmp_path, original, fmt):
    path = tmp_path / "with_object.pth"
    torch.save({"model": original, "extra": Payload()}, path)
    with pytest.raises(HarnessError, match="weights_only=True") as caught:
        load_original_state_dict(path, fmt)
    assert "record_execution" in str(caught.value) and "arbitrary code" in str(caught.value)
    assert EXECUTED == []


def test_unreadable_and_absent_files_and_unknown_formats(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(HarnessError, match="could not be read as a torch checkpoint"):
        load_original_state_dict(garbage, "blip")
    with pytest.raises(HarnessError, match="does not exist"):
        load_original_state_dict(tmp_path / "absent.pth", "blip")
    with pytest.raises(HarnessError, match="known formats: blip, covr"):
        load_original_state_dict(garbage, "lavis")


# -- position embeddings -------------------------------------------------------------------


def test_position_count_mismatch_is_an_error_unless_interpolation_is_asked():
    larger = blip_retrieval_state_dict(image_size=48)  # 3x3 patches + class = 10 positions
    with pytest.raises(HarnessError, match="10 position embeddings but the config .* needs 5"):
        blip_to_transformers(larger, tiny_config())

    grid_value = torch.randn(V_WIDTH)
    larger["visual_encoder.pos_embed"][0, 1:] = grid_value  # a constant grid stays constant
    converted = blip_to_transformers(larger, tiny_config(), interpolate_positions=True)
    table = converted.state_dict["vision_model.embeddings.position_embedding"]
    assert table.shape == (1, 5, V_WIDTH)
    assert torch.equal(table[0, 0], larger["visual_encoder.pos_embed"][0, 0])  # class position kept
    torch.testing.assert_close(table[0, 1:], grid_value.expand(4, -1), atol=1e-5, rtol=0)
    assert "interpolated from 10 to 5" in converted.notes[0]
    converted_model(converted.state_dict)  # loads into the 32 px model


def test_config_notes_flag_the_transformers_layer_norm_default():
    assert config_notes(tiny_config()) == []
    default = BlipConfig()
    assert "BLIP's ViT uses 1e-06" in config_notes(default)[0]


# -- 6: provenance --------------------------------------------------------------------------


def test_sha256_is_the_file_hash(blip_file):
    want = hashlib.sha256(blip_file.read_bytes()).hexdigest()
    assert file_sha256(blip_file) == want
    assert convert_checkpoint(blip_file, "blip", tiny_config())[1].sha256 == want
