"""blip2: embeddings as CoVR-2 computes them, multi-vector similarity, LAVIS conversion,
save/load. Tiny random models only."""

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
from backbones.convert_blip2 import lavis_blip2_to_transformers
from harness.errors import HarnessError

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


# -- 4. LAVIS conversion -----------------------------------------------------------
LAVIS_VOCAB = 40


def lavis_state_dict(config, seed=0) -> dict[str, torch.Tensor]:
    """A LAVIS Blip2Qformer state dict written from LAVIS' module names and shapes
    (eva_vit.py VisionTransformer, blip2_models/Qformer.py BertLMHeadModel)."""
    g = torch.Generator().manual_seed(seed)
    vc, qc = config.vision_config, config.qformer_config
    e, h, d = vc.hidden_size, qc.hidden_size, config.image_text_hidden_size
    p = vc.patch_size
    n_pos = (vc.image_size // p) ** 2 + 1
    shapes: dict[str, tuple[int, ...]] = {
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
    for i in range(vc.num_hidden_layers):
        b = f"visual_encoder.blocks.{i}."
        shapes |= {
            b + "norm1.weight": (e,), b + "norm1.bias": (e,),
            b + "attn.qkv.weight": (3 * e, e), b + "attn.q_bias": (e,), b + "attn.v_bias": (e,),
            b + "attn.proj.weight": (e, e), b + "attn.proj.bias": (e,),
            b + "norm2.weight": (e,), b + "norm2.bias": (e,),
            b + "mlp.fc1.weight": (vc.intermediate_size, e), b + "mlp.fc1.bias": (vc.intermediate_size,),
            b + "mlp.fc2.weight": (e, vc.intermediate_size), b + "mlp.fc2.bias": (e,),
        }
    for i in range(qc.num_hidden_layers):
        b = f"Qformer.bert.encoder.layer.{i}."
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
    state = {}
    for key, shape in shapes.items():
        scale = 0.5 if key.endswith(("cls_token", "pos_embed")) else 0.1
        tensor = torch.randn(shape, generator=g) * scale
        if "norm" in key.lower() and key.endswith("weight"):
            tensor = 1.0 + tensor
        state[key] = tensor
    state["Qformer.bert.embeddings.position_ids"] = torch.arange(qc.max_position_embeddings)[None]
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
