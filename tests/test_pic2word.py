"""The `pic2word` composer (backbones/composers/pic2word.py): its mapping network,
where the pseudo word goes, its prompts, saving and reloading it, Pic2Word's own
checkpoint layout, and training it on images alone with CLIP frozen."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from backbones.base import LoadOptions
from backbones.clip import ClipBackbone, build_composer
from backbones.clip_tiny import ClipTiny, build_random
from backbones.composers.pic2word import (
    PIC2WORD_PROMPTS,
    PROMPT,
    TRAINING_PROMPT,
    Pic2Word,
    placeholder_id,
    query_texts,
)
from backbones.composers.pic2word_file import load_pic2word_file
from harness.core.errors import HarnessError
from harness.suites.base import Query, SplitData
from harness.suites.fashioniq import join_captions
from harness.training.image_pairs import image_pairs
from harness.training.loop import fine_tune
from harness.training.losses import chance_loss, contrastive_loss, info_nce, pic2word_loss
from harness.training.recipes import RECIPES
from harness.training.settings import TrainSettings

EMBED, WIDTH = 64, 128  # clip-tiny's projection and text hidden size


@pytest.fixture(scope="module")
def shapes_train(tmp_path_factory) -> SplitData:
    """Six generated shapes sets: 36 distinct images."""
    from harness.suites.shapes import ShapesSuite, ensure_dataset
    from harness.suites.shapes_generator import ShapesSpec

    root = tmp_path_factory.mktemp("pic2word") / "shapes"
    ensure_dataset(root, ShapesSpec(seed=2, image_size=32, sets={"train": 6}, queries_per_set={"train": 2}))
    return ShapesSuite(root).load("train")


def pixels_of(backbone, data: SplitData, ids: list[str]) -> torch.Tensor:
    images = [torch.tensor(backbone.preprocess(data.load_image(i))) for i in ids]
    return backbone.normalize(torch.stack(images))


def randomised(composer: Pic2Word, seed: int) -> Pic2Word:
    """Weights unlike the seeded initialisation, so that a reload cannot pass by chance."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in composer.module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return composer


def test_mapping_network_is_im2text_with_pic2word_defaults():
    composer = Pic2Word(EMBED, width=WIDTH)
    assert (composer.middle_dim, composer.layers, composer.dropout) == (512, 2, 0.1)
    linears = [m for m in composer.module.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(EMBED, 512), (512, 512), (512, WIDTH)]
    assert [m.p for m in composer.module.modules() if isinstance(m, torch.nn.Dropout)] == [0.1, 0.1]
    assert sorted(composer.module.state_dict()) == sorted(
        f"{name}.{p}" for name in ("layers.0.0", "layers.1.0", "fc_out") for p in ("weight", "bias"))
    assert composer.pseudo_words(torch.randn(5, EMBED)).shape == (5, WIDTH)
    assert Pic2Word(EMBED).width == EMBED  # CLIP ViT-B / ViT-L: text width = projection
    again = Pic2Word(EMBED, **composer.config())
    assert again.config() == composer.config()
    assert composer.trains_on == "images" and composer.prompt == PROMPT == PIC2WORD_PROMPTS["cirr"]


def test_clip_tiny_builds_it_at_the_text_width_and_refuses_another():
    backbone = build_random(0, "pic2word")
    assert backbone.composer.width == backbone.clip.config.text_config.hidden_size == WIDTH
    with pytest.raises(HarnessError, match="64-wide pseudo words"):
        ClipBackbone("clip-tiny", backbone.clip, backbone.tokenizer, backbone.preprocessing, Pic2Word(EMBED),
                     "x", "x")


def test_saved_composer_reloads_the_same_weights_and_queries(tmp_path, shapes_train):
    backbone = build_random(0, "pic2word")
    randomised(backbone.composer, seed=1)
    backbone.save(tmp_path)
    composer = build_composer("pic2word", EMBED, str(tmp_path))  # the width comes from the saved config
    assert composer.trained and composer.config() == backbone.composer.config()
    saved, loaded = backbone.composer.module.state_dict(), composer.module.state_dict()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)

    reloaded = ClipTiny.load(LoadOptions(checkpoint=str(tmp_path), composer="pic2word"), torch.device("cpu"))
    backbone.model.eval()
    ids = [q.reference for q in shapes_train.queries[:4]]
    captions = ["make the circle red", "", "add a square", "remove the star"]
    with torch.no_grad():
        before = backbone.encode_query(pixels_of(backbone, shapes_train, ids), captions)
        after = reloaded.encode_query(pixels_of(reloaded, shapes_train, ids), captions)
    assert torch.equal(before, after)


def test_the_pseudo_word_takes_the_place_of_the_placeholder(shapes_train):
    backbone = build_random(0, "pic2word")
    backbone.model.eval()
    randomised(backbone.composer, seed=2)
    star = placeholder_id(backbone.tokenizer)
    features = backbone.image_tokens(pixels_of(backbone, shapes_train, [shapes_train.queries[0].reference]))
    with torch.no_grad():
        word = backbone.composer.pseudo_words(features)
        composed = backbone.composer.compose(backbone, features, ["make it red"])
        # The same CLIP whose "*" embedding is the word: the word must sit exactly there.
        written = copy.deepcopy(backbone.clip)
        written.text_model.embeddings.token_embedding.weight[star] = word[0]
        expected = written.text_projection(written.text_model(**backbone.tokenize([
            "a photo of * , make it red"])).pooler_output)
    assert torch.allclose(composed, expected, atol=1e-5)


def test_the_query_follows_the_image_and_needs_its_placeholder(shapes_train):
    backbone = build_random(0, "pic2word")
    backbone.model.eval()
    ids = [shapes_train.queries[0].reference, shapes_train.queries[-1].reference]
    with torch.no_grad():
        tokens = backbone.image_tokens(pixels_of(backbone, shapes_train, ids))
        one = backbone.query_embedding_from_tokens(tokens[[0, 0]], ["make it red", "make it red"])
        other = backbone.query_embedding_from_tokens(tokens[[0, 1]], ["make it red", "make it red"])
    assert torch.allclose(one[0], one[1], atol=1e-6) and torch.allclose(one[0], other[0], atol=1e-6)
    assert (other[0] - other[1]).abs().max() > 1e-3  # another image, another word, another query
    with pytest.raises(HarnessError, match="holds the placeholder"):
        backbone.query_embedding_from_tokens(tokens[:1], ["make * red"])
    backbone.max_text_len = 5  # "a photo of *" cut before its "*"
    with pytest.raises(HarnessError, match="lost their placeholder"):
        backbone.query_embedding_from_tokens(tokens[:1], ["make it red"])
    with pytest.raises(HarnessError, match="placeholder"):
        Pic2Word(EMBED, prompt="a photo of {caption}")


def test_a_tokenizer_that_splits_the_placeholder_is_refused():
    class Splitting:
        unk_token_id = 0

        def encode(self, text, add_special_tokens=False):
            return [5, 6]

    with pytest.raises(HarnessError, match="splits the placeholder"):
        placeholder_id(Splitting())
    tokenizer = build_random(0, "pic2word").tokenizer
    assert tokenizer.convert_ids_to_tokens(placeholder_id(tokenizer)) == "*"


def test_prompts_per_suite():
    # CIRR: the caption as Pic2Word writes it; training: an empty caption.
    assert query_texts(PROMPT, ["has two dogs", ""]) == ["a photo of * , has two dogs", TRAINING_PROMPT]
    assert TRAINING_PROMPT == "a photo of *"
    # FashionIQ: the suite's "c1 and c2" (Pic2Word puts c2 first)
    assert query_texts(PROMPT, [join_captions("is blue", "has sleeves")]) == ["a photo of * , is blue and has sleeves"]
    assert PIC2WORD_PROMPTS["fashioniq"].format(c1="is blue", c2="has sleeves") == \
        "a photo of * , has sleeves and is blue"
    # ImageNet-R's domain prompt as a pic2word prompt, the domain as the caption
    domain = Pic2Word(EMBED, prompt="a {caption} of *")
    assert query_texts(domain.prompt, ["cartoon"]) == [PIC2WORD_PROMPTS["imagenet-r"].format(domain="cartoon")]
    assert build_random(0, "pic2word").describe_composer() == {"composer": "pic2word", "prompt": PROMPT}


def test_image_pairs_hold_every_image_once(shapes_train):
    pairs = image_pairs(shapes_train)
    images = list(dict.fromkeys([i for q in shapes_train.queries for i in (q.reference, q.target)]
                                + shapes_train.gallery))
    assert len(images) == 36 and [q.reference for q in pairs.queries] == images == pairs.gallery
    assert all(q.caption == "" and q.target == q.reference for q in pairs.queries)
    assert [q.pair_id for q in pairs.queries] == list(range(36))
    assert pairs.image_paths == {i: shapes_train.image_paths[i] for i in images}

    video = SplitData("v", "train", [Query(0, "f1", "x", "clip")], ["clip"], {"f1": "a", "f2": "b"}, True, "",
                      frames={"clip": (("f1", 0.5), ("f2", 0.5))})
    assert [q.reference for q in image_pairs(video).queries] == ["f1", "f2"]
    video.image_paths.pop("f2")
    with pytest.raises(HarnessError, match="have no file"):
        image_pairs(video)


def test_pic2word_loss_is_the_mean_of_the_two_cross_entropies():
    torch.manual_seed(0)
    q, t = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    logits, labels = 100 * t @ q.T, torch.arange(6)  # Pic2Word's image rows, text columns
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    assert pic2word_loss(q, t, 0.01).item() == pytest.approx(expected.item(), rel=1e-5)
    assert pic2word_loss(q, t, 0.07).item() == pytest.approx(info_nce(q, t, 0.07).item() / 2, rel=1e-5)
    assert contrastive_loss("pic2word", 0.01, 1.0, 0.5)(q, t).item() == pytest.approx(expected.item(), rel=1e-5)
    same = F.normalize(torch.ones(6, 8), dim=-1)
    assert pic2word_loss(same, same).item() == pytest.approx(chance_loss("pic2word", 6)[0], rel=1e-5)
    assert chance_loss("hn-nce", 6)[0] == pytest.approx(2 * math.log(6))


def test_training_on_images_moves_the_mapping_alone(shapes_train):
    from harness.config import RunConfig

    assert RunConfig.resolve({"backbone": "clip-tiny", "recipe": "pic2word"}).loss == "pic2word"
    backbone = build_random(0, "pic2word")
    assert backbone.stage == "composer"
    clip_before = {k: v.clone() for k, v in backbone.clip.state_dict().items()}
    mapping_before = {k: v.clone() for k, v in backbone.composer.module.state_dict().items()}
    # 36 images: one step an epoch, so more epochs and no warm-up than the recipe's
    settings = TrainSettings(**{**RECIPES["pic2word"], "epochs": 30, "warmup_steps": 0}, max_train_queries=None,
                             deepspeed=None, grad_cache_chunk=None, checkpoint_every=0, resume=False, seed=0)
    result = fine_tune(backbone, image_pairs(shapes_train), settings, torch.device("cpu"), "fp32")
    assert result.loss == "pic2word" and result.batch_size == 36 and result.targets_cached
    assert sum(result.loss_curve[-5:]) / 5 < result.loss_curve[0] - 0.3
    assert all(torch.equal(clip_before[k], v) for k, v in backbone.clip.state_dict().items())
    assert any(not torch.equal(mapping_before[k], v) for k, v in backbone.composer.module.state_dict().items())


def test_pic2word_checkpoint_file_loads_into_the_composer(tmp_path, shapes_train):
    source = randomised(Pic2Word(EMBED, middle_dim=32, width=WIDTH), seed=3)
    mapping = {f"module.{k}": v for k, v in source.module.state_dict().items()}  # saved from DDP
    path = tmp_path / "epoch_30.pt"
    torch.save({"epoch": 30, "name": "run", "state_dict": {"logit_scale": torch.tensor(4.6)},
                "state_dict_img2text": mapping, "optimizer": {"state": {}, "param_groups": []}}, path)
    composer = load_pic2word_file(path)
    assert composer.config() == source.config() and composer.trained
    assert all(torch.equal(v, composer.module.state_dict()[k]) for k, v in source.module.state_dict().items())
    clip = build_random(0, "sum")
    backbone = ClipBackbone("clip-tiny", clip.clip, clip.tokenizer, clip.preprocessing, composer, "x", "x")
    pixels = pixels_of(backbone, shapes_train, [shapes_train.queries[0].reference])
    assert backbone.encode_query(pixels, ["make it red"]).shape == (1, EMBED)

    for change, message in ((lambda m: m.pop("module.layers.1.0.bias"), "missing layers.1.0.bias"),
                            (lambda m: m.update({"module.scale": torch.ones(1)}), "unexpected scale")):
        broken = dict(mapping)
        change(broken)
        torch.save({"state_dict_img2text": broken}, path)
        with pytest.raises(HarnessError, match=message):
            load_pic2word_file(path)
    torch.save({"state_dict": {}}, path)
    with pytest.raises(HarnessError, match="no 'state_dict_img2text'"):
        load_pic2word_file(path)


def test_another_mapping_is_another_cache_key():
    first, second = build_random(0, "pic2word"), build_random(0, "pic2word")
    assert first.checkpoint_sha256 == second.checkpoint_sha256  # same seed, same weights
    randomised(second.composer, seed=4)
    assert first.checkpoint_sha256 != second.checkpoint_sha256
    assert build_random(0, "sum").checkpoint_sha256 != first.checkpoint_sha256
