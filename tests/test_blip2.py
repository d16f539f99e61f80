"""blip2: embeddings as CoVR-2 computes them, multi-vector similarity, save/load (the
LAVIS conversion: tests/test_convert_blip2.py). Tiny random models only."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import Blip2ForImageTextRetrieval

from backbones.base import BACKBONES, LoadOptions
from backbones.blip2 import (
    Blip2Backbone,
    Blip2Composer,
    blip2_similarity,
    build_tiny_blip2,
    tiny_blip2_config,
)
from harness.core.errors import HarnessError
from tests.originals.lavis import LAVIS_VOCAB, lavis_state_dict

torch.set_num_threads(1)

TEXTS = ["make the red circle blue", "remove the triangle", "add a small green square at the top left"]
N_QUERY = 4


@pytest.fixture(scope="module")
def tiny() -> Blip2Composer:
    composer = build_tiny_blip2(seed=0, num_query_tokens=N_QUERY)
    composer.model.eval()
    return composer


def pixels(backbone, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = backbone.image_size
    raw = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)
    return backbone.normalize(raw)


def unit(x):
    return torch.allclose(x.norm(dim=-1), torch.ones(x.shape[:-1]), atol=1e-5)


# -- 1. shapes, norms, dependence --------------------------------------------------
@torch.no_grad()
def test_shapes_and_unit_norms(tiny):
    px = pixels(tiny)
    images = tiny.encode_image(px)
    queries = tiny.encode_query(px, TEXTS)
    texts = tiny.encode_text(TEXTS)
    d = tiny.embed_dim
    assert tiny.multi_vector and tiny.num_query_tokens == N_QUERY and tiny.query_multi_vector
    assert images.shape == (3, N_QUERY, d) and unit(images)
    assert queries.shape == (3, N_QUERY, d) and unit(queries)  # CoVR-2: query-position outputs
    assert texts.shape == (3, d) and unit(texts)
    # the query tokens are not all alike (transformers zero-initialises them)
    assert (images[:, 0] - images[:, 1]).abs().max() > 1e-3


@torch.no_grad()
def test_text_cls_variant_is_one_vector(tiny):
    variant = Blip2Composer("blip2", tiny.model, tiny.tokenizer, tiny.preprocessing, "x", "x", composed="text_cls")
    out = variant.encode_query(pixels(tiny), TEXTS)
    assert out.shape == (3, tiny.embed_dim) and unit(out) and not variant.query_multi_vector
    with pytest.raises(ValueError):
        Blip2Composer("blip2", tiny.model, tiny.tokenizer, tiny.preprocessing, "x", "x", composed="cls")


@torch.no_grad()
def test_composed_query_depends_on_image_and_text(tiny):
    px = pixels(tiny, n=2, seed=1)
    same_text = tiny.encode_query(px, [TEXTS[0], TEXTS[0]])
    assert (same_text[0] - same_text[1]).abs().max() > 1e-4
    same_image = tiny.encode_query(px[:1].expand(2, -1, -1, -1), TEXTS[:2])
    assert (same_image[0] - same_image[1]).abs().max() > 1e-4


@torch.no_grad()
def test_tokens_split_equals_direct(tiny):
    px = pixels(tiny)
    tokens = tiny.image_tokens(px)
    assert torch.allclose(tiny.image_embedding_from_tokens(tokens), tiny.encode_image(px), atol=1e-6)
    assert torch.allclose(tiny.query_embedding_from_tokens(tokens, TEXTS), tiny.encode_query(px, TEXTS), atol=1e-6)


# -- 2. the adapter against HF's own forward and a CoVR-2 recipe written here -------
@torch.no_grad()
def test_image_and_text_embeddings_equal_hf_retrieval_forward(tiny):
    px = pixels(tiny)
    batch = tiny.tokenizer(TEXTS, padding="longest", return_tensors="pt")
    out = tiny.model(pixel_values=px, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     use_image_text_matching_head=False)
    assert torch.allclose(tiny.encode_image(px), out.image_embeds, atol=1e-6)
    assert torch.allclose(tiny.encode_text(TEXTS), out.text_embeds, atol=1e-6)


@torch.no_grad()
def test_composed_query_equals_covr2_recipe(tiny):
    """CoVR-2 (src/test/blip2/cirr.py): Qformer.bert(text ids, query_embeds=query_tokens,
    attention_mask=[ones | text mask], encoder_hidden_states=ln_vision(ViT(ref))), keep
    last_hidden_state[:, :32], normalize(text_proj(.)). Here from HF submodules, with the
    BERT embeddings (word + absolute position, then the embedding LayerNorm, which HF keeps
    as qformer.layernorm) written out."""
    model = tiny.model
    px = pixels(tiny, seed=3)
    batch = tiny.tokenizer(TEXTS, padding="longest", truncation=True, max_length=64, return_tensors="pt")
    ids, text_mask = batch["input_ids"], batch["attention_mask"]
    n = len(TEXTS)
    image_embeds = model.vision_model(pixel_values=px).last_hidden_state
    positions = torch.arange(ids.shape[1])
    text_embeds = model.embeddings.word_embeddings(ids) + model.embeddings.position_embeddings(positions)[None]
    query_tokens = model.query_tokens.expand(n, -1, -1)
    joint = torch.cat([query_tokens, text_embeds], dim=1)
    mask = torch.cat([torch.ones(n, N_QUERY, dtype=torch.long), text_mask], dim=1)
    hidden = model.qformer(
        query_embeds=joint, query_length=N_QUERY, attention_mask=mask,
        encoder_hidden_states=image_embeds,
        encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long),
    ).last_hidden_state
    # the joint pass is the one HF's ITM head reads: same hidden states, same ITM logits
    itm = model(pixel_values=px, input_ids=ids, attention_mask=text_mask, use_image_text_matching_head=True)
    assert torch.allclose(model.itm_head(hidden[:, :N_QUERY]).mean(dim=1), itm.logits_per_image, atol=1e-5)
    expected = F.normalize(model.text_projection(hidden[:, :N_QUERY]), dim=-1)
    assert torch.allclose(tiny.encode_query(px, TEXTS), expected, atol=1e-6)
    variant = Blip2Composer("blip2", model, tiny.tokenizer, tiny.preprocessing, "x", "x", composed="text_cls")
    expected_cls = F.normalize(model.text_projection(hidden[:, N_QUERY]), dim=-1)
    assert torch.allclose(variant.encode_query(px, TEXTS), expected_cls, atol=1e-6)


# -- 3. similarity -------------------------------------------------------------------
def _random_tokens(shape, seed):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_similarity_max_over_token_pairs_equals_einsum():
    q, g = _random_tokens((5, 4, 8), 0), _random_tokens((7, 4, 8), 1)
    reference = torch.einsum("qid,gjd->qgij", q, g).amax((-1, -2))
    assert torch.allclose(blip2_similarity(q, g), reference, atol=1e-6)
    chunked = blip2_similarity(q, g, max_block_bytes=64)  # one query x one gallery item per block
    assert torch.allclose(chunked, reference, atol=1e-6)


def test_similarity_one_vector_query():
    q, g = _random_tokens((5, 8), 2), _random_tokens((7, 3, 8), 3)
    reference = torch.einsum("qd,gjd->qgj", q, g).amax(-1)
    assert torch.allclose(blip2_similarity(q, g), reference, atol=1e-6)
    assert torch.allclose(blip2_similarity(q, g, max_block_bytes=1), reference, atol=1e-6)


def test_similarity_mean_pooling():
    q, g = _random_tokens((5, 4, 8), 4), _random_tokens((7, 4, 8), 5)
    qm, gm = F.normalize(q.mean(1), dim=-1), F.normalize(g.mean(1), dim=-1)
    assert torch.allclose(blip2_similarity(q, g, pool="mean"), qm @ gm.T, atol=1e-6)
    raw = blip2_similarity(q, g, pool="mean", renormalize=False)
    assert torch.allclose(raw, q.mean(1) @ g.mean(1).T, atol=1e-6)
    one = _random_tokens((5, 8), 6)
    assert torch.allclose(blip2_similarity(one, g, pool="mean"), one @ gm.T, atol=1e-6)
    with pytest.raises(ValueError):
        blip2_similarity(q, g, pool="sum")


# -- 5. registration, save / load ---------------------------------------------------
@torch.no_grad()
def test_registered_and_save_load_round_trip(tiny, tmp_path):
    assert BACKBONES.get("blip2") is Blip2Backbone
    with pytest.raises(HarnessError):  # a directory without config.json
        Blip2Backbone.check(LoadOptions(str(tmp_path)))
    tiny.save(tmp_path)
    assert Blip2Backbone.check(LoadOptions(str(tmp_path))) == []
    loaded = Blip2Backbone.load(LoadOptions(str(tmp_path)), torch.device("cpu"))
    px = pixels(tiny, seed=5)
    assert loaded.image_size == tiny.image_size and loaded.embed_dim == tiny.embed_dim
    assert torch.allclose(loaded.encode_image(px), tiny.encode_image(px), atol=1e-6)
    assert torch.allclose(loaded.encode_query(px, TEXTS), tiny.encode_query(px, TEXTS), atol=1e-6)
    assert torch.allclose(loaded.encode_text(TEXTS), tiny.encode_text(TEXTS), atol=1e-6)


@torch.no_grad()
def test_load_switches_on_text_path_of_old_configs(tiny, tmp_path):
    """Hub configs written before transformers renamed it say `qformer_text_input`."""
    tiny.save(tmp_path)
    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())
    del config["qformer_config"]["use_qformer_text_input"]
    config["qformer_config"]["qformer_text_input"] = True
    config_path.write_text(json.dumps(config))
    (tmp_path / "checksums.sha256").unlink()  # a hub snapshot carries no checksum record
    loaded = Blip2Backbone.load(LoadOptions(str(tmp_path)), torch.device("cpu"))
    assert torch.allclose(loaded.encode_text(TEXTS), tiny.encode_text(TEXTS), atol=1e-6)


def test_load_refuses_checkpoint_without_text_weights(tmp_path):
    config = tiny_blip2_config(LAVIS_VOCAB, num_query_tokens=N_QUERY)
    config.qformer_config.use_qformer_text_input = False
    Blip2ForImageTextRetrieval(config).save_pretrained(tmp_path)
    with pytest.raises(HarnessError, match=r"missing \(\d+\): qformer\.encoder\.layer\.0\.intermediate"):
        Blip2Backbone.load(LoadOptions(str(tmp_path)), torch.device("cpu"))


@torch.no_grad()
def test_load_lavis_pth_file(tmp_path):
    """--checkpoint blip2.pth (format 'lavis' by its kind), with --model-config and --tokenizer."""
    from backbones.blip_tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    config = tiny_blip2_config(len(tokenizer), num_query_tokens=N_QUERY)
    config.to_json_file(tmp_path / "config.json")
    original = lavis_state_dict(config, seed=4)
    torch.save({"model": original}, tmp_path / "blip2_finetune_tiny.pth")
    options = LoadOptions(str(tmp_path / "blip2_finetune_tiny.pth"), tokenizer=str(tmp_path / "tokenizer"),
                          model_config=str(tmp_path / "config.json"))
    assert Blip2Backbone.check(options) == []
    loaded = Blip2Backbone.load(options, torch.device("cpu"))
    assert torch.equal(loaded.model.query_tokens, original["query_tokens"])
    assert loaded.encode_query(pixels(loaded), TEXTS).shape == (3, N_QUERY, config.image_text_hidden_size)
    with pytest.raises(HarnessError, match="lavis"):
        Blip2Backbone.check(LoadOptions(options.checkpoint, checkpoint_format="covr"))
