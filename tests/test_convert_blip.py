"""Original BLIP / CoVR checkpoints -> BlipForImageTextRetrieval (backbones/convert.py).

Nothing is downloaded: each test builds a tiny random checkpoint in the ORIGINAL
layout (tests/originals/blip.py, key names written from BLIP's source) and checks the
conversion against a reference forward pass computed with plain torch ops from the
original-layout weights.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import BlipConfig, BlipForImageTextRetrieval

from backbones.checkpoint_files import load_original_state_dict
from backbones.convert import blip_to_transformers, config_notes, convert_checkpoint, load_converted
from harness.core.errors import HarnessError
from tests.originals.blip import (
    RETRIEVAL_UNUSED,
    RETRIEVAL_UNUSED_NAMES,
    T_LAYERS,
    T_WIDTH,
    V_WIDTH,
    VOCAB,
    blip_retrieval_state_dict,
    converted_model,
    embed,
    inputs,
    reference_bert,
    reference_vit,
    tiny_config,
)

torch.set_num_threads(1)






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
