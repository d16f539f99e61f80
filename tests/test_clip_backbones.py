"""CLIP backbones: clip-tiny's contract, CLIP's preprocessing, and the pretrained
registrations (clip-base-patch32, clip-large-patch14, clip-bigg) loading transformers
directories and cached hub snapshots built here from configs (nothing is downloaded)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPConfig, CLIPModel

from backbones import BACKBONES, LoadOptions
from backbones.blip_tiny import SPECIAL_TOKENS, tiny_tokenizer
from backbones.clip_preprocess import ClipPreprocess, from_processor_config
from backbones.clip_tiny import build_random
from backbones.preprocess import CLIP_MEAN, CLIP_STD
from harness.core.errors import HarnessError
from tests.conftest import CIRR_ANNOTATIONS

CPU = torch.device("cpu")
PRETRAINED = {"clip-base-patch32": "openai/clip-vit-base-patch32",
              "clip-large-patch14": "openai/clip-vit-large-patch14",
              "clip-bigg": "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"}
TEXTS = ["make it red", "the same dog on grass", "two cats instead"]
# The tiny tokenizer's ids as a CLIP text config needs them: pooling at the first [SEP].
TOKEN_IDS = dict(pad_token_id=SPECIAL_TOKENS.index("[PAD]"), bos_token_id=SPECIAL_TOKENS.index("[CLS]"),
                 eos_token_id=SPECIAL_TOKENS.index("[SEP]"))


@pytest.fixture(scope="module")
def tiny():
    return build_random(seed=0, composer="sum")


def pixels(backbone, n=3, seed=0, size=None):
    rng = np.random.default_rng(seed)
    size = size or backbone.image_size
    return backbone.normalize(torch.from_numpy(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)))


def embeddings(backbone, px):
    with torch.no_grad():
        return backbone.encode_image(px), backbone.encode_text(TEXTS), backbone.encode_query(px, TEXTS)


# -- clip-tiny ------------------------------------------------------------------------

def test_clip_tiny_embeds_images_texts_and_queries_as_unit_vectors(tiny):
    image, text, query = embeddings(tiny, pixels(tiny))
    for emb in (image, text, query):
        assert emb.shape == (3, 64) and emb.dtype == torch.float32
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    # sum: normalize(normalize(q) + normalize(t)), CLIP4Cir's baseline
    torch.testing.assert_close(query, F.normalize(image + text, dim=-1))
    # the text is read at its end token ([SEP], the first one), after the final LayerNorm
    batch = tiny.tokenize(TEXTS)
    with torch.no_grad():
        hidden = tiny.clip.text_model(**batch).last_hidden_state
    ends = (batch["input_ids"] == tiny.tokenizer.sep_token_id).int().argmax(dim=1)
    assert (ends < batch["attention_mask"].sum(dim=1)).all() and len(set(ends.tolist())) > 1
    torch.testing.assert_close(text, F.normalize(tiny.clip.text_projection(hidden[torch.arange(3), ends]), dim=-1))


def test_clip_tiny_saved_directory_loads_back_bit_identical(tiny, tmp_path):
    tiny.save(tmp_path / "saved")
    loaded = BACKBONES.get("clip-tiny").load(LoadOptions(checkpoint=str(tmp_path / "saved")), CPU)
    px = pixels(tiny)
    for want, got in zip(embeddings(tiny, px), embeddings(loaded, px)):
        assert torch.equal(want, got)


def test_the_composer_is_part_of_the_checkpoint_hash(tmp_path):
    sums, images = build_random(seed=0, composer="sum"), build_random(seed=0, composer="image")
    assert sums.weights_sha256 == images.weights_sha256  # the same CLIP
    assert sums.checkpoint_sha256 != images.checkpoint_sha256
    assert sums.checkpoint_sha256 == build_random(seed=0, composer="sum").checkpoint_sha256
    sums.save(tmp_path)
    entry = BACKBONES.get("clip-tiny")
    hashes = {name: entry.load(LoadOptions(checkpoint=str(tmp_path), composer=name), CPU).checkpoint_sha256
              for name in ("sum", "image", "text")}
    assert len(set(hashes.values())) == 3


def test_a_pseudo_word_replaces_only_its_own_texts_placeholder(tiny):
    star = tiny.tokenizer.convert_tokens_to_ids("*")
    texts = ["a photo of * in red", "a photo of * on grass"]
    own_row = tiny.clip.text_model.embeddings.token_embedding.weight[star].detach()
    with torch.no_grad():
        plain = tiny.text_features(texts)
        # the placeholder's own embedding as the pseudo word: the same features
        same = tiny.text_features(texts, star, own_row.expand(2, -1))
        words = torch.randn(2, own_row.numel(), generator=torch.Generator().manual_seed(0))
        both = tiny.text_features(texts, star, words)
        first_only = tiny.text_features(texts, star, torch.stack([words[0], own_row]))
    torch.testing.assert_close(same, plain)
    assert not torch.allclose(both[0], plain[0], atol=1e-3) and not torch.allclose(both[1], plain[1], atol=1e-3)
    torch.testing.assert_close(first_only[0], both[0])  # text 0 reads its own vector
    torch.testing.assert_close(first_only[1], plain[1])  # text 1 is untouched by text 0's


def test_a_placeholder_truncated_away_is_an_error(tiny):
    star = tiny.tokenizer.convert_tokens_to_ids("*")
    texts = ["a photo of *", "red " * 90 + "*"]  # 77 tokens end before the second one's
    with pytest.raises(HarnessError, match=r"texts \[1\] lost their placeholder"):
        tiny.text_features(texts, star, torch.zeros(2, 128))


# -- CLIP's preprocessing ---------------------------------------------------------------

def gradient_image(width: int, height: int) -> Image.Image:
    """Every pixel different, so that a crop one pixel off shows."""
    y, x = np.mgrid[0:height, 0:width]
    return Image.fromarray(np.stack([x * 2 % 256, y * 3 % 256, (x + 7 * y) % 256], -1).astype(np.uint8))


@pytest.mark.parametrize("width,height,size,resize_to,resized,offset", [
    (100, 60, 32, 0, (53, 32), (10, 0)),  # excess 21: round(10.5) = 10 (CenterCrop rounds half to even)
    (100, 60, 29, 0, (48, 29), (10, 0)),  # excess 19: round(9.5) = 10
    (100, 60, 32, 36, (60, 36), (14, 2)),  # shortest edge 36 first, then the 32 crop
    (60, 100, 32, 0, (32, 53), (0, 10)),  # portrait: the crop moves down
    (55, 55, 224, 0, (224, 224), (0, 0)),  # int(224 * 55 / 55), not int(55 * (224 / 55)) = 223
])
def test_clip_preprocess_resizes_the_shortest_edge_and_crops_the_centre(width, height, size, resize_to, resized,
                                                                        offset):
    image = gradient_image(width, height)
    # by hand: torchvision's Resize (long edge int(short * long / min)) and CenterCrop
    short = resize_to or size
    long = int(short * max(width, height) / min(width, height))
    assert resized == ((short, long) if width <= height else (long, short))
    assert offset == (int(round((resized[0] - size) / 2)), int(round((resized[1] - size) / 2)))
    left, top = offset
    want = np.asarray(image.resize(resized, Image.Resampling.BICUBIC))[top:top + size, left:left + size]
    got = ClipPreprocess(size, resize_to=resize_to).to_uint8(image)
    assert got.shape == (size, size, 3)
    np.testing.assert_array_equal(got, want)


MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.mark.parametrize("crop,size", [
    (32, 36),  # older preprocessor configs: plain ints
    ({"height": 32, "width": 32}, {"shortest_edge": 36}),  # transformers' current form
])
def test_processor_config_gives_crop_shortest_edge_mean_and_std(tmp_path, crop, size):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"crop_size": crop, "size": size, "image_mean": MEAN, "image_std": STD,
         "image_processor_type": "CLIPImageProcessor"}))
    assert from_processor_config(tmp_path, 224) == ClipPreprocess(32, MEAN, STD, resize_to=36)
    assert from_processor_config(tmp_path / "absent", 224) == ClipPreprocess(224, CLIP_MEAN, CLIP_STD)
    assert from_processor_config(None, 336) == ClipPreprocess(336)


# -- pretrained registrations on transformers directories -------------------------------

def small_clip_directory(directory: Path, seed: int = 0) -> CLIPModel:
    """A random CLIPModel (32 px) saved with the offline tiny tokenizer and a
    preprocessor_config.json (crop 32, shortest edge 36, its own mean and std)."""
    tokenizer = tiny_tokenizer()
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=16)
    text = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=77, **TOKEN_IDS)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=32)).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps(
        {"crop_size": {"height": 32, "width": 32}, "size": {"shortest_edge": 36}, "image_mean": MEAN,
         "image_std": STD, "do_center_crop": True, "resample": 3, "image_processor_type": "CLIPImageProcessor"}))
    return model


def direct_forward(model: CLIPModel, px: torch.Tensor, texts: list[str]):
    """CLIP's features straight from transformers, without the backbone."""
    batch = tiny_tokenizer()(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        image = model.visual_projection(model.vision_model(pixel_values=px).pooler_output)
        text = model.text_projection(model.text_model(input_ids=batch["input_ids"],
                                                      attention_mask=batch["attention_mask"]).pooler_output)
    return F.normalize(image, dim=-1), F.normalize(text, dim=-1)


def test_a_transformers_directory_loads_with_its_preprocessing(tmp_path):
    model = small_clip_directory(tmp_path)
    backbone = BACKBONES.get("clip-base-patch32").load(LoadOptions(checkpoint=str(tmp_path)), CPU)
    assert backbone.name == "clip-base-patch32" and backbone.checkpoint_id == str(tmp_path.resolve())
    assert backbone.preprocessing == ClipPreprocess(32, MEAN, STD, resize_to=36)
    assert backbone.max_text_len == 77 and backbone.embed_dim == 32
    images = [gradient_image(100, 60), gradient_image(60, 100), gradient_image(37, 37)]
    crops = [np.asarray(image.resize(size, Image.Resampling.BICUBIC))[top:top + 32, left:left + 32]
             for image, size, (left, top) in zip(images, [(60, 36), (36, 60), (36, 36)], [(14, 2), (2, 14), (2, 2)])]
    for image, want in zip(images, crops):
        np.testing.assert_array_equal(backbone.preprocess(image), want)
    px = backbone.normalize(torch.from_numpy(np.stack(crops)))
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    torch.testing.assert_close(px[0], (torch.from_numpy(crops[0].copy()).permute(2, 0, 1) / 255 - mean) / std)
    want_image, want_text = direct_forward(model, px, TEXTS)
    got_image, got_text, got_query = embeddings(backbone, px)
    torch.testing.assert_close(got_image, want_image)
    torch.testing.assert_close(got_text, want_text)
    torch.testing.assert_close(got_query, F.normalize(want_image + want_text, dim=-1))
    assert BACKBONES.get("clip-base-patch32").check(LoadOptions(checkpoint=str(tmp_path))) == []


def test_a_saved_run_loads_back_bit_identical_under_its_registration(tmp_path):
    small_clip_directory(tmp_path / "clip")
    entry = BACKBONES.get("clip-large-patch14")
    backbone = entry.load(LoadOptions(checkpoint=str(tmp_path / "clip"), composer="image"), CPU)
    backbone.save(tmp_path / "saved")
    loaded = entry.load(LoadOptions(checkpoint=str(tmp_path / "saved"), composer="image"), CPU)
    assert loaded.composer.name == "image" and loaded.checkpoint_sha256 != backbone.checkpoint_sha256
    px = pixels(backbone, size=32)
    for want, got in zip(embeddings(backbone, px), embeddings(loaded, px)):
        assert torch.equal(want, got)


# -- hub ids: the cache, offline, and files refused -------------------------------------

@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """HF_HUB_OFFLINE=1 and an empty cache; huggingface_hub reads both at import, so
    its constants are set too. Returns the cache folder."""
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return tmp_path / "hf" / "hub"


@pytest.fixture
def no_model_loading(monkeypatch):
    """check() finds what is missing without loading anything."""
    def refuse(*args, **kwargs):
        raise AssertionError("check() loaded a model")

    monkeypatch.setattr(CLIPModel, "from_pretrained", refuse)


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_each_registration_names_its_default_hub_checkpoint_when_it_is_not_cached(offline_hub, no_model_loading,
                                                                                   name):
    entry = BACKBONES.get(name)
    assert entry.default_checkpoint == PRETRAINED[name] and entry.composers is True
    (problem,) = entry.check(LoadOptions())
    assert f"hub id {PRETRAINED[name]} is not in the local Hugging Face cache" in problem
    assert "HF_HUB_OFFLINE is set" in problem and "--checkpoint DIR" in problem
    assert "BLIP .pth" not in problem  # CLIP reads no original files


def test_any_clip_hub_id_is_taken_under_a_registration(offline_hub, no_model_loading):
    (problem,) = BACKBONES.get("clip-large-patch14").check(LoadOptions(checkpoint="openai/clip-vit-large-patch14-336"))
    assert "hub id openai/clip-vit-large-patch14-336 is not" in problem


@pytest.mark.parametrize("file_name", ["ViT-L-14.pt", "open_clip_pytorch_model.bin"])
def test_an_original_checkpoint_file_is_refused_with_the_way_to_convert_it(tmp_path, file_name):
    path = tmp_path / file_name
    torch.save({"visual.proj": torch.zeros(2, 2)}, path)
    entry = BACKBONES.get("clip-large-patch14")
    (problem,) = entry.check(LoadOptions(checkpoint=str(path)))
    assert str(path) in problem and "not supported" in problem
    assert "convert with transformers' convert_clip_original_pytorch_to_hf.py" in problem
    assert "or pass the hub id (default openai/clip-vit-large-patch14) / a transformers directory" in problem
    with pytest.raises(HarnessError, match="convert_clip_original_pytorch_to_hf.py"):
        entry.load(LoadOptions(checkpoint=str(path)), CPU)


def test_a_cached_hub_snapshot_loads_offline_with_its_preprocessor_config(offline_hub):
    """The default hub id from a cache laid out as huggingface_hub writes it."""
    repo = offline_hub / "models--openai--clip-vit-base-patch32"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    model = small_clip_directory(repo / "snapshots" / revision)
    entry = BACKBONES.get("clip-base-patch32")
    assert entry.check(LoadOptions()) == []
    backbone = entry.load(LoadOptions(), CPU)
    assert backbone.checkpoint_id == "openai/clip-vit-base-patch32"
    assert backbone.preprocessing == ClipPreprocess(32, MEAN, STD, resize_to=36)
    px = pixels(backbone)
    torch.testing.assert_close(embeddings(backbone, px)[0], direct_forward(model, px, TEXTS)[0])
    (repo / "snapshots" / revision / "preprocessor_config.json").unlink()
    assert entry.load(LoadOptions(), CPU).preprocessing == ClipPreprocess(32)  # CLIP's, at the config's size


# -- real size ----------------------------------------------------------------------------

# openai/clip-vit-large-patch14's config.json (the architecture; ids set for the tiny tokenizer)
VIT_L14 = {
    "projection_dim": 768,
    "logit_scale_init_value": 2.6592,
    "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                    "num_attention_heads": 12, "max_position_embeddings": 77, "vocab_size": 49408,
                    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": 768, **TOKEN_IDS},
    "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                      "num_attention_heads": 16, "patch_size": 14, "image_size": 224, "num_channels": 3,
                      "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": 768},
}


def one_image_set(root: Path) -> Path:
    """A CIRR-layout root with one image set of the real val annotations: its six
    images as the split file, the queries that stay inside it, stand-in images."""
    from harness.suites.cirr_standin import write_standin_images

    captions = json.loads((CIRR_ANNOTATIONS / "captions" / "cap.rc2.val.json").read_text())
    split = json.loads((CIRR_ANNOTATIONS / "image_splits" / "split.rc2.val.json").read_text())
    members = captions[0]["img_set"]["members"]
    queries = [c for c in captions if set(c["img_set"]["members"]) == set(members)
               and {c["reference"], c["target_hard"], *c["target_soft"]} <= set(members)]
    for sub, name, content in [("captions", "cap.rc2.val.json", queries),
                               ("image_splits", "split.rc2.val.json", {m: split[m] for m in members})]:
        (root / sub).mkdir(parents=True)
        (root / sub / name).write_text(json.dumps(content))
    write_standin_images(root, ["val"], size=40)
    return root


@pytest.mark.slow
def test_real_size_clip_large_patch14_embeds_a_cirr_split(tmp_path):
    from harness.evaluation.embed import embed_split
    from harness.suites.cirr import CirrSuite

    config = CLIPConfig(text_config=VIT_L14["text_config"], vision_config=VIT_L14["vision_config"],
                        projection_dim=768, logit_scale_init_value=2.6592)
    with torch.device("meta"):
        count = sum(p.numel() for p in CLIPModel(config).parameters()) / 1e6
    assert abs(count - 427.6) < 1, count  # ViT-L/14: 427.6M parameters
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        CLIPModel(config).save_pretrained(tmp_path / "vit-l-14")  # ~1.7 GB, fp32
        tiny_tokenizer().save_pretrained(tmp_path / "vit-l-14")  # ids < 49,408: rows of the embedding
        backbone = BACKBONES.get("clip-large-patch14").load(LoadOptions(checkpoint=str(tmp_path / "vit-l-14")), CPU)
        data = CirrSuite(one_image_set(tmp_path / "cirr")).load("val")
        emb = embed_split(backbone, data, CPU, "fp32", batch_size=2)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(tmp_path / "vit-l-14", ignore_errors=True)  # pytest keeps recent tmp folders
    assert backbone.preprocessing == ClipPreprocess(224) and backbone.text_positions == 77
    assert len(data.gallery) == 6 and len(data.queries) >= 1
    assert emb.gallery.shape == (6, 768)
    assert emb.composed.shape == emb.image.shape == emb.text.shape == (len(data.queries), 768)
    for values in (emb.gallery, emb.composed, emb.image, emb.text):
        assert torch.isfinite(values).all()
        torch.testing.assert_close(values.norm(dim=-1), torch.ones(len(values)))


def test_a_saved_run_keeps_its_preprocessing_and_refuses_options_for_original_files(tmp_path):
    backbone = build_random(0, "sum")
    backbone.preprocessing = ClipPreprocess(64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), resize_to=72)
    backbone.save(tmp_path / "run")
    assert from_processor_config(tmp_path / "run", 224) == backbone.preprocessing
    for name in ("clip-tiny", "clip-large-patch14"):
        problems = BACKBONES.get(name).check(LoadOptions(checkpoint=str(tmp_path / "run"), tokenizer="bert-base-uncased"))
        assert any("--tokenizer applies to original BLIP" in p for p in problems)
