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


@pytest.mark.slow
def test_real_size_blip2_embeds_one_image_and_query():
    from transformers import Blip2ForImageTextRetrieval

    from backbones.blip2 import Blip2Composer
    from backbones.convert_blip2 import lavis_coco_config

    torch.manual_seed(0)
    config = lavis_coco_config()  # ViT-g/14 at 364 px, Q-Former with 32 query tokens
    with torch.device("meta"):
        count = sum(p.numel() for p in Blip2ForImageTextRetrieval(config).parameters()) / 1e6
    assert 1100 < count < 1250, count  # ViT-g ~1B + Q-Former ~0.1B
    model = Blip2ForImageTextRetrieval(config).eval()
    composer = Blip2Composer("blip2", model, tiny_tokenizer(), ImagePreprocess(364), "random", "random")
    pixels = composer.normalize(torch.randint(0, 256, (1, 364, 364, 3), dtype=torch.uint8))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        target = composer.encode_image(pixels)
        query = composer.encode_query(pixels, ["make the dog white"])
    assert target.shape == (1, 32, 256) and query.shape[-1] == 256
    torch.testing.assert_close(target.float().norm(dim=-1), torch.ones(1, 32), atol=1e-3, rtol=0)
