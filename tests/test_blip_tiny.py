"""blip-tiny: offline tokenizer, embeddings as CoVR computes them, save/load."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from backbones import BACKBONES, LoadOptions
from backbones.blip import ENC_TOKEN
from backbones.blip_tiny import build_random, tiny_tokenizer
from harness.suites.scenes import VOCABULARY
from tests.conftest import CIRR_ANNOTATIONS


@pytest.fixture(scope="module")
def tiny():
    return build_random(seed=0)


def pixels(backbone, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (n, 64, 64, 3), dtype=torch.uint8, generator=g)
    return backbone.normalize(raw)


def test_tokenizer_knows_the_suite_words_and_spells_out_others():
    tokenizer = tiny_tokenizer()
    unk = tokenizer.unk_token_id
    ids = tokenizer(" ".join(VOCABULARY))["input_ids"]
    assert unk not in ids
    assert len(ids) == len(VOCABULARY) + 2  # each word one token, plus [CLS] and [SEP]
    assert tokenizer.convert_tokens_to_ids(ENC_TOKEN) != unk


def test_real_cirr_captions_tokenize_without_unk():
    path = CIRR_ANNOTATIONS / "captions" / "cap.rc2.val.json"
    tokenizer = tiny_tokenizer()
    captions = [q["caption"] for q in json.loads(path.read_text())[:500]]
    ids = tokenizer(captions)["input_ids"]
    unknown = sum(row.count(tokenizer.unk_token_id) for row in ids)
    assert unknown <= 2, "plain English captions should split into known pieces"


def test_embeddings_follow_covr(tiny):
    model = tiny.model
    x = pixels(tiny)
    texts = ["make the red circle blue", "remove the triangle", "add a small green square at the top"]
    with torch.no_grad():
        image_tokens = model.vision_model(pixel_values=x).last_hidden_state
        expected_target = F.normalize(model.vision_proj(image_tokens[:, 0]), dim=-1)
        batch = tiny.tokenizer(texts, padding="longest", return_tensors="pt")
        ids = batch["input_ids"].clone()
        ids[:, 0] = tiny.tokenizer.convert_tokens_to_ids(ENC_TOKEN)
        hidden = model.text_encoder(
            input_ids=ids, attention_mask=batch["attention_mask"],
            encoder_hidden_states=image_tokens,
            encoder_attention_mask=torch.ones(image_tokens.shape[:-1], dtype=torch.long),
        ).last_hidden_state
        expected_query = F.normalize(model.text_proj(hidden[:, 0]), dim=-1)
        text_hidden = model.text_encoder(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        expected_text = F.normalize(model.text_proj(text_hidden[:, 0]), dim=-1)

        torch.testing.assert_close(tiny.encode_image(x), expected_target)
        torch.testing.assert_close(tiny.encode_query(x, texts), expected_query)
        torch.testing.assert_close(tiny.encode_text(texts), expected_text)
        norms = tiny.encode_query(x, texts).norm(dim=-1)
        torch.testing.assert_close(norms, torch.ones(3))


def test_composed_query_reads_the_image(tiny):
    texts = ["make the red circle blue"] * 3
    with torch.no_grad():
        a = tiny.encode_query(pixels(tiny, seed=1), texts)
        b = tiny.encode_query(pixels(tiny, seed=2), texts)
    assert (a - b).abs().max() > 1e-4


def test_save_and_load_round_trip(tiny, tmp_path):
    tiny.save(tmp_path / "ckpt")
    loaded = BACKBONES.get("blip-tiny").load(LoadOptions(str(tmp_path / "ckpt")), torch.device("cpu"))
    x = pixels(tiny)
    texts = ["remove the triangle", "make the big square small", "move the circle to the left"]
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_query(x, texts), tiny.encode_query(x, texts))
        torch.testing.assert_close(loaded.encode_image(x), tiny.encode_image(x))


def test_preprocess_resizes_to_uint8(tiny):
    array = tiny.preprocess(Image.new("RGBA", (100, 37), (255, 0, 0, 128)))
    assert array.shape == (64, 64, 3) and array.dtype.name == "uint8"


def test_bf16_autocast_stays_close_to_fp32(tiny):
    from harness.core.precision import autocast

    x = pixels(tiny)
    texts = ["make the red circle blue", "remove the triangle", "move the square to the left"]
    with torch.no_grad():
        full = tiny.encode_query(x, texts)
        with autocast("bf16", torch.device("cpu")):
            half = tiny.encode_query(x, texts)
    assert half.dtype == torch.float32  # embeddings leave the model in fp32
    assert (full * half).sum(-1).min() > 0.99  # cosine similarity


@pytest.mark.parametrize("side", ["right", "left"])
def test_tokenize_is_the_tokenizers_own_batch(tiny, side, monkeypatch):
    """Each caption is tokenized once and the batch padded from the kept ids: the
    same ids and mask as the tokenizer's padded batch, truncation included."""
    monkeypatch.setattr(tiny.tokenizer, "padding_side", side)
    texts = ["add a red circle", "make the blue square larger and move it to the left " * 6, "x", "add a red circle"]
    tiny.max_text_len = 12
    got = tiny.tokenize(texts)
    want = tiny.tokenizer(texts, padding="longest", truncation=True, max_length=12, return_tensors="pt")
    assert torch.equal(got["input_ids"], want["input_ids"])
    assert torch.equal(got["attention_mask"], want["attention_mask"])
    tiny.max_text_len = 64  # another phase's length: tokenized afresh, not cut from the kept ids
    want = tiny.tokenizer(texts, padding="longest", truncation=True, max_length=64, return_tensors="pt")
    assert torch.equal(tiny.tokenize(texts)["input_ids"], want["input_ids"])
