"""LAVIS BLIP-2 checkpoints -> Blip2ForImageTextRetrieval (backbones/convert_blip2.py):
key by key, the vision forward against LAVIS' EVA ViT, and what the conversion refuses."""

from __future__ import annotations

import pytest
import torch
from transformers import Blip2ForImageTextRetrieval

from backbones.blip2 import tiny_blip2_config
from backbones.convert_blip2 import lavis_blip2_to_transformers
from tests.originals.lavis import (
    LAVIS_VOCAB,
    eva_reference_forward,
    expected_hf_key,
    lavis_state_dict,
)

torch.set_num_threads(1)
N_QUERY = 4


@pytest.fixture(scope="module")
def lavis_config():
    return tiny_blip2_config(LAVIS_VOCAB, num_query_tokens=N_QUERY)


@torch.no_grad()
def test_lavis_conversion_key_by_key(lavis_config):
    original = lavis_state_dict(lavis_config)
    converted, dropped = lavis_blip2_to_transformers(original, lavis_config)
    model = Blip2ForImageTextRetrieval(lavis_config)
    model.load_state_dict(converted, strict=True)
    assert dropped == sorted(k for k in original if k.startswith("Qformer.cls.") or k in (
        "temp", "Qformer.bert.embeddings.position_ids"))
    covered = set()
    for key, tensor in original.items():
        if key in dropped or key.endswith(("attn.q_bias", "attn.v_bias")):
            continue
        target = expected_hf_key(key)
        assert torch.equal(converted[target], tensor), key
        assert torch.equal(model.state_dict()[target], tensor), key
        covered.add(target)
    for i in range(lavis_config.vision_config.num_hidden_layers):
        q = original[f"visual_encoder.blocks.{i}.attn.q_bias"]
        v = original[f"visual_encoder.blocks.{i}.attn.v_bias"]
        fused = converted[f"vision_model.encoder.layers.{i}.self_attn.qkv.bias"]
        assert torch.equal(fused, torch.cat([q, torch.zeros_like(q), v]))
        covered.add(f"vision_model.encoder.layers.{i}.self_attn.qkv.bias")
    assert covered == set(converted)  # nothing converted that the test did not check


@torch.no_grad()
def test_lavis_conversion_vision_forward_matches_eva(lavis_config):
    original = lavis_state_dict(lavis_config, seed=1)
    converted, _ = lavis_blip2_to_transformers({"model": original}, lavis_config)  # checkpoint form
    model = Blip2ForImageTextRetrieval(lavis_config).eval()
    model.load_state_dict(converted, strict=True)
    px = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    ours = model.vision_model(pixel_values=px).last_hidden_state
    reference = eva_reference_forward(original, lavis_config, px)
    # the only difference left is ln_vision's eps (1e-5 in LAVIS, 1e-6 in transformers)
    assert torch.allclose(ours, reference, atol=2e-5), (ours - reference).abs().max()


def test_lavis_conversion_refuses_unknown_keys_and_wrong_shapes(lavis_config):
    original = lavis_state_dict(lavis_config)
    with pytest.raises(ValueError, match="unknown"):
        lavis_blip2_to_transformers({**original, "visual_encoder.blocks.0.gamma_1": torch.ones(32)}, lavis_config)
    bad = dict(original)
    bad["visual_encoder.pos_embed"] = torch.zeros(1, 17, 32)  # another resolution
    with pytest.raises(ValueError, match="shapes"):
        lavis_blip2_to_transformers(bad, lavis_config)
    missing = dict(original)
    del missing["itm_head.bias"]
    with pytest.raises(ValueError, match="missing"):
        lavis_blip2_to_transformers(missing, lavis_config)
