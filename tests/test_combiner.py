"""CLIP4Cir's composers on CLIP: the `combiner` (backbones/composers/combiner.py) and
its loss and recipe, and the `sum` baseline, each against CLIP4Cir's formulas written
out by hand (ABaldrati/CLIP4Cir src/combiner.py, src/combiner_train.py, src/utils.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from backbones.clip import build_composer
from backbones.clip_tiny import build_random
from backbones.composers import COMPOSERS
from harness.training.losses import chance_loss, clip4cir_loss, contrastive_loss

TEXTS = ["make it a red circle", "two blue squares instead", "remove the triangle"]


class FixedText:
    """Stands in for the CLIP backbone: text features given in advance."""

    def __init__(self, features: torch.Tensor):
        self.features = features

    def text_features(self, texts: list[str]) -> torch.Tensor:
        return self.features[: len(texts)]


def _pixels(backbone, n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, backbone.image_size, backbone.image_size, generator=generator)


def _combiner_backbone(seed: int = 1):
    backbone = build_random(seed, "combiner")
    backbone.model.eval()
    return backbone


def test_combiner_dims_follow_clip4cir_ratios():
    combiner = COMPOSERS.get("combiner")(64)
    net = combiner.module
    assert combiner.config() == {"projection_dim": 256, "hidden_dim": 512}  # 4x and 8x, as 2560 / 5120 for 640
    assert (combiner.trains_on, combiner.prompt) == ("triplets", None)
    assert net.text_projection_layer.weight.shape == net.image_projection_layer.weight.shape == (256, 64)
    assert net.combiner_layer.weight.shape == (512, 512) and net.output_layer.weight.shape == (64, 512)
    assert [tuple(m.weight.shape) for m in net.dynamic_scalar if isinstance(m, torch.nn.Linear)] == [(512, 512),
                                                                                                    (1, 512)]
    assert sum(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in net.modules()) == 4
    layers = ["text_projection_layer", "image_projection_layer", "combiner_layer", "output_layer",
              "dynamic_scalar.0", "dynamic_scalar.3"]  # CLIP4Cir's state-dict keys
    assert set(net.state_dict()) == {f"{layer}.{kind}" for layer in layers for kind in ("weight", "bias")}
    given = COMPOSERS.get("combiner")(64, projection_dim=32, hidden_dim=48)
    assert given.config() == {"projection_dim": 32, "hidden_dim": 48}


def test_saved_combiner_reloads_bit_for_bit(tmp_path):
    from backbones.base import LoadOptions
    from backbones.clip_tiny import ClipTiny

    backbone = build_random(2, "combiner")
    backbone.composer = type(backbone.composer)(backbone.embed_dim, projection_dim=32, hidden_dim=48)
    backbone.model.composer = backbone.composer.module
    with torch.no_grad():  # weights no fresh initialisation would give
        for p in backbone.composer.module.parameters():
            p.add_(torch.randn_like(p))
    backbone.model.eval()
    backbone.save(tmp_path)
    reloaded = build_composer("combiner", backbone.embed_dim, str(tmp_path))
    assert reloaded.trained and reloaded.config() == {"projection_dim": 32, "hidden_dim": 48}
    saved, loaded = backbone.composer.module.state_dict(), reloaded.module.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    again = ClipTiny.load(LoadOptions(checkpoint=str(tmp_path), composer="combiner"), torch.device("cpu"))
    pixels = _pixels(backbone, 3)
    with torch.no_grad():
        assert torch.equal(backbone.encode_query(pixels, TEXTS), again.encode_query(pixels, TEXTS))


def test_dropout_acts_in_training_mode_only():
    backbone = _combiner_backbone()
    pixels = _pixels(backbone, 3)
    with torch.no_grad():
        first, second = backbone.encode_query(pixels, TEXTS), backbone.encode_query(pixels, TEXTS)
        assert torch.equal(first, second)
        backbone.model.train()  # what the training loop does: the composer module follows
        assert backbone.model.composer.training and backbone.composer.module.training
        noisy, noisier = backbone.encode_query(pixels, TEXTS), backbone.encode_query(pixels, TEXTS)
    assert not torch.equal(noisy, noisier) and not torch.equal(noisy, first)


def _by_hand(net, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """CLIP4Cir's combine_features (src/combiner.py:50-65) from the module's weights, without dropout."""
    def linear(layer, x):
        return x @ layer.weight.T + layer.bias

    projected = torch.cat([torch.relu(linear(net.text_projection_layer, text)),
                           torch.relu(linear(net.image_projection_layer, image))], dim=-1)
    first, second = net.dynamic_scalar[0], net.dynamic_scalar[3]
    lam = torch.sigmoid(linear(second, torch.relu(linear(first, projected))))
    out = linear(net.output_layer, torch.relu(linear(net.combiner_layer, projected))) + lam * text + (1 - lam) * image
    return out / out.norm(dim=-1, keepdim=True)


def test_compose_is_clip4cir_formula():
    torch.manual_seed(0)
    combiner = COMPOSERS.get("combiner")(8, projection_dim=6, hidden_dim=10)
    combiner.module.eval()
    image, text = 3 * torch.randn(4, 8), 0.5 * torch.randn(4, 8)  # unnormalised, as CLIP4Cir feeds it
    with torch.no_grad():
        got = combiner.compose(FixedText(text), image, ["a", "b", "c", "d"])
        expected = _by_hand(combiner.module, image, text)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_clip4cir_sum_is_element_wise_sum_and_sum_weighs_the_sides_alike():
    """element_wise_sum (src/utils.py:47-54) over the features as they come from CLIP;
    `sum` over the normalised features."""
    image, text = torch.tensor([[3.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    composed = F.normalize(COMPOSERS.get("clip4cir-sum")(2).compose(FixedText(text), image, ["a", "b"]), dim=-1)
    torch.testing.assert_close(composed, (image + text) / (image + text).norm(dim=-1, keepdim=True))
    alike = F.normalize(COMPOSERS.get("sum")(2).compose(FixedText(text), image, ["a", "b"]), dim=-1)
    torch.testing.assert_close(alike, F.normalize(F.normalize(image, dim=-1) + F.normalize(text, dim=-1), dim=-1))
    assert not torch.allclose(composed, alike)


def test_clip4cir_loss_is_one_way_cross_entropy():
    torch.manual_seed(0)
    q = F.normalize(torch.randn(5, 8, dtype=torch.float64), dim=-1)
    t = F.normalize(torch.randn(5, 8, dtype=torch.float64), dim=-1)
    logits = 100 * q @ t.T  # CLIP4Cir's logit scale 100
    expected = sum(-math.log(math.exp(logits[i, i]) / sum(math.exp(v) for v in logits[i])) for i in range(5)) / 5
    assert clip4cir_loss(q, t, 0.01).item() == pytest.approx(expected, rel=1e-6)  # in fp32, as hn_nce
    assert contrastive_loss("clip4cir", 0.01, 1.0, 0.0)(q, t).item() == pytest.approx(expected, rel=1e-6)
    assert clip4cir_loss(t, q, 0.01).item() != pytest.approx(expected, rel=1e-3)  # one direction only
    same = torch.ones(6, 4)
    assert clip4cir_loss(same, same).item() == pytest.approx(chance_loss("clip4cir", 6)[0]) == pytest.approx(math.log(6))
    assert chance_loss("hn-nce", 6)[0] == pytest.approx(2 * math.log(6))


def test_combiner_training_moves_only_the_combiner(tmp_path):
    """clip-tiny at random weights, CLIP frozen: the clip4cir recipe lowers its loss and
    changes nothing of CLIP."""
    from harness.suites.shapes import ShapesSuite, ensure_dataset
    from harness.suites.shapes_generator import ShapesSpec
    from harness.training.loop import fine_tune
    from harness.training.recipes import RECIPES
    from harness.training.settings import TrainSettings

    ensure_dataset(tmp_path, ShapesSpec(seed=2, image_size=32, sets={"train": 4, "val": 1, "test1": 1},
                                        queries_per_set={"train": 2, "val": 1, "test1": 1}))
    data = ShapesSuite(tmp_path).load("train")
    backbone = _combiner_backbone(seed=3)
    backbone.stage = "composer"
    settings = TrainSettings(**RECIPES["clip4cir"], max_train_queries=None, deepspeed=None, grad_cache_chunk=None,
                             checkpoint_every=0, resume=False, seed=0)
    clip_before = {k: v.clone() for k, v in backbone.clip.state_dict().items()}
    combiner_before = {k: v.clone() for k, v in backbone.composer.module.state_dict().items()}
    loss_before = _eval_loss(backbone, data, settings.temperature)
    result = fine_tune(backbone, data, settings, torch.device("cpu"), "fp32")
    assert result.loss == "clip4cir" and result.schedule == "constant" and result.targets_cached
    assert not backbone.model.training and not backbone.composer.module.training  # evaluation without dropout
    assert _eval_loss(backbone, data, settings.temperature) < loss_before - 0.3  # 2.13 -> 1.51 at this seed
    assert result.loss_curve[-1] < result.loss_curve[0]
    clip_after = backbone.clip.state_dict()
    assert all(torch.equal(clip_before[k], clip_after[k]) for k in clip_before)
    assert any(not torch.equal(v, backbone.composer.module.state_dict()[k]) for k, v in combiner_before.items())


def _eval_loss(backbone, data, temperature: float) -> float:
    """The clip4cir loss of the whole split as one batch, in eval mode."""
    from harness.suites.image_store import ImageStore

    queries = [q for q in data.queries if q.target is not None]
    store = ImageStore(data, backbone.preprocess, backbone.image_size,
                       [i for q in queries for i in (q.reference, q.target)])
    with torch.no_grad():
        query = backbone.encode_query(backbone.normalize(store.batch([q.reference for q in queries])),
                                      [q.caption for q in queries])
        target = backbone.encode_image(backbone.normalize(store.batch([q.target for q in queries])))
    return clip4cir_loss(query, target, temperature).item()
