"""Real-size architectures build from config (random weights, nothing downloaded)
and embed one image and one query on CPU."""

from __future__ import annotations

import pytest
import torch
from transformers import BlipForImageTextRetrieval

from backbones.blip import BlipComposer
from backbones.blip_configs import blip_config
from backbones.blip_tiny import tiny_tokenizer
from backbones.preprocess import ImagePreprocess


@pytest.mark.slow
@pytest.mark.parametrize("size,params_millions", [("base", 224), ("large", 446)])
def test_real_size_blip_embeds_one_image_and_query(size, params_millions):
    torch.manual_seed(0)
    config = blip_config(size)
    model = BlipForImageTextRetrieval(config).eval()
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(count - params_millions) / params_millions < 0.05, count
    # The real tokenizer (bert-base-uncased) cannot be downloaded here; ids from the
    # tiny one are valid rows of the 30,524-token embedding.
    composer = BlipComposer(f"blip-{size}", model, tiny_tokenizer(), ImagePreprocess(384), "random", "random")
    pixels = composer.normalize(torch.randint(0, 256, (1, 384, 384, 3), dtype=torch.uint8))
    with torch.no_grad():
        target = composer.encode_image(pixels)
        query = composer.encode_query(pixels, ["make the dog white"])
    assert target.shape == query.shape == (1, 256)
    torch.testing.assert_close(query.norm(dim=-1), torch.ones(1))
