"""CoVR's and CoVR-2's protocol, and every result saying which one it used: the
gallery of CoVR's val script (--gallery folder), the protocol fingerprint and its
differences to the papers', BLIP's ViT eps and special-token ids on the hub path,
CoVR-2's .ckpt with the fixed gallery of its base model, and BLIP-2 fine-tuning."""

from __future__ import annotations

import json
import string
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BertTokenizer, BlipForImageTextRetrieval

from backbones.base import LoadOptions
from backbones.blip2 import Blip2Backbone, build_tiny_blip2, tiny_blip2_config
from backbones.blip_configs import blip_config
from backbones.blip_pretrained import BlipBase
from backbones.blip_tiny import tiny_tokenizer
from harness.config import RunConfig
from harness.core.errors import HarnessError
from harness.evaluation.embed import embed_split
from harness.pipeline import Model, fine_tune_and_embed, run
from harness.reports.run import result_markdown
from harness.suites.captions import cleaned
from harness.suites.shapes import ShapesSuite, ensure_dataset
from harness.suites.shapes_generator import ShapesSpec
from tests.originals.lavis import lavis_state_dict

SMALL = ShapesSpec(seed=3, image_size=32, sets={"train": 60, "val": 20, "test1": 4},
                   queries_per_set={"train": 4, "val": 2, "test1": 1})


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes") / "data"
    ensure_dataset(root, SMALL)
    return root


def test_folder_gallery_ranks_against_every_image_of_the_folder(shapes_root, tmp_path):
    extra = 7  # images in dev/ that the split file does not list
    for i in range(extra):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(shapes_root / "dev" / f"dev-extra-{i}.png")
    common = dict(data_root=str(shapes_root), out=str(tmp_path), cache=False, train=False, threads=2)
    split = run(RunConfig.resolve(common), argv=["(split gallery)"])
    folder = run(RunConfig.resolve({**common, "gallery": "folder"}), argv=["(folder gallery)"])
    assert folder["protocol"]["gallery_images"] == split["protocol"]["gallery_images"] + extra
    assert folder["protocol"]["gallery"] == "folder dev/" and split["protocol"]["gallery"] == "split file"
    assert folder["protocol"]["fingerprint"]["hash"] != split["protocol"]["fingerprint"]["hash"]
    assert folder["data"]["gallery_listing_sha256"]
    with pytest.raises(HarnessError, match="--gallery folder is defined for the val and test1"):
        run(RunConfig.resolve({**common, "gallery": "folder", "split": "train"}), argv=[])


@pytest.mark.slow
def test_cirr_results_carry_the_fingerprint_and_the_differences_to_the_papers(cirr_root, tmp_path):
    result = run(RunConfig.resolve(dict(suite="cirr", data_root=str(cirr_root), out=str(tmp_path), cache=False,
                                        train=False, caption_cleaning="none", precision="bf16")), argv=[])
    fp = result["protocol"]["fingerprint"]
    assert fp["caption_cleaning"] == "none" and fp["precision"] == "bf16" and fp["gallery"] == "split file"
    assert len(fp["hash"]) == 12 and fp["gallery_images"] == 2297
    table = result_markdown(result)
    row = next(line for line in table.splitlines() if line.startswith("- CoVR BLIP-L, as in the paper"))
    for difference in ("caption_cleaning: none vs covr", "gallery: split file vs folder test1/",
                       "precision: bf16 vs fp32", "split: val vs test1"):
        assert difference in row, (difference, row)


def tokenizer_with(extra: list[str], directory: Path) -> Path:
    """A BERT tokenizer of 30,522 tokens (bert-base-uncased's size), then `extra` added."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.ascii_lowercase]
    words += [f"w{i}" for i in range(30522 - len(words))]
    tokenizer = BertTokenizer(vocab=OrderedDict((w, i) for i, w in enumerate(words)))
    tokenizer.add_special_tokens({"bos_token": extra[0]})
    tokenizer.add_special_tokens({"additional_special_tokens": extra[1:]})
    tokenizer.save_pretrained(directory)
    return directory


def tiny_hub_blip(directory: Path, tokens: list[str]) -> Path:
    """A transformers BLIP directory with BLIP's vocabulary size and the hub's default
    ViT eps (1e-5)."""
    config = blip_config("base", image_size=32)
    config.vision_config.update(dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, patch_size=16, layer_norm_eps=1e-5))
    config.text_config.update(dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64, encoder_hidden_size=32))
    BlipForImageTextRetrieval(config).save_pretrained(directory)
    return tokenizer_with(tokens, directory)


def test_blip_hub_path_sets_vit_eps_and_checks_the_special_token_ids(tmp_path):
    good = BlipBase.load(LoadOptions(str(tiny_hub_blip(tmp_path / "good", ["[DEC]", "[ENC]"]))), torch.device("cpu"))
    assert good.model.config.vision_config.layer_norm_eps == 1e-6
    assert good.model.vision_model.encoder.layers[0].layer_norm1.eps == 1e-6
    assert good.enc_token_id == 30523 and next(good.model.parameters()).dtype == torch.float32
    swapped = tiny_hub_blip(tmp_path / "swapped", ["[ENC]", "[DEC]"])  # [ENC] at 30522
    with pytest.raises(HarnessError, match=r"\[ENC\] id 30522; BLIP's init_tokenizer gives 30522 and 30523"):
        BlipBase.load(LoadOptions(str(swapped)), torch.device("cpu"))


class CosineSchedule:
    """Stands for CoVR's src/tools/scheduler.py class, pickled whole in its .ckpt."""

    def __init__(self):
        self.init_lr, self.max_epochs = 1e-5, 5


@pytest.fixture()
def covr2_files(tmp_path, monkeypatch):
    """A base BLIP-2 (a transformers directory converted from a tiny LAVIS state dict) and
    a CoVR-2 .ckpt fine-tuned from it: Q-Former and query tokens moved, no ITM head."""
    for name in ("src", "src.tools", "src.tools.scheduler"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setattr(CosineSchedule, "__module__", "src.tools.scheduler")
    sys.modules["src.tools.scheduler"].CosineSchedule = CosineSchedule
    tokenizer = tiny_tokenizer()
    config = tiny_blip2_config(len(tokenizer), num_query_tokens=4)
    config.to_json_file(tmp_path / "config.json")
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    original = lavis_state_dict(config, seed=5)
    torch.save({"model": original}, tmp_path / "base.pth")
    options = LoadOptions(str(tmp_path / "base.pth"), tokenizer=str(tmp_path / "tokenizer"),
                          model_config=str(tmp_path / "config.json"))
    Blip2Backbone.load(options, torch.device("cpu")).save(tmp_path / "base")
    tuned = {("module." + k): (v + 0.05 if k.startswith(("Qformer.bert.encoder", "query_tokens")) else v)
             for k, v in original.items() if not k.startswith("itm_head") and k != "temp"}
    torch.save({"epoch": 3, "model": tuned, "optimizer": {}, "scheduler": CosineSchedule()}, tmp_path / "tuned.ckpt")
    return tmp_path


def test_covr2_ckpt_loads_and_scores_against_its_base_models_gallery(covr2_files, shapes_root, monkeypatch):
    monkeypatch.setattr(Blip2Backbone, "default_checkpoint", str(covr2_files / "base"))  # "auto" finds it
    config = RunConfig.resolve(dict(backbone="blip2", checkpoint=str(covr2_files / "tuned.ckpt"), suite="shapes",
                                    data_root=str(shapes_root), tokenizer=str(covr2_files / "tokenizer"),
                                    model_config=str(covr2_files / "config.json"), train=False, cache=False))
    tuned = Blip2Backbone.load(config.load_options(), torch.device("cpu"))
    data = cleaned(ShapesSuite(shapes_root).load("val"), "covr")
    model = Model(tuned, torch.device("cpu"), "fp32", 64, None)
    embeddings, _, record = fine_tune_and_embed(config, model, data, None, Blip2Backbone, covr2_files)
    base = Blip2Backbone.load(LoadOptions(str(covr2_files / "base")), torch.device("cpu"))
    want = embed_split(base, data, torch.device("cpu"), "fp32", 64)
    own = embed_split(tuned, data, torch.device("cpu"), "fp32", 64)
    assert record["rule"] == "checkpoint" and record["checkpoint"] == str(covr2_files / "base")
    assert torch.equal(embeddings.gallery, want.gallery) and torch.equal(embeddings.image, want.image)
    assert torch.equal(embeddings.composed, own.composed)
    assert not torch.equal(own.gallery, want.gallery)  # the tuned Q-Former's own gallery differs
    loaded = RunConfig.resolve({**config.to_dict(), "mix": (), "gallery_model": "loaded"})
    embeddings, _, record = fine_tune_and_embed(loaded, model, data, None, Blip2Backbone, covr2_files)
    assert record["rule"] == "loaded" and torch.equal(embeddings.gallery, own.gallery)


@pytest.mark.slow
def test_blip2_fine_tunes_as_covr2_and_its_loss_falls(shapes_root, tmp_path):
    build_tiny_blip2(seed=0).save(tmp_path / "tiny-blip2")
    result = run(RunConfig.resolve(dict(
        backbone="blip2", checkpoint=str(tmp_path / "tiny-blip2"), suite="shapes", data_root=str(shapes_root),
        train=True, epochs=2, batch_size=16, lr=1e-3, deepspeed="none", out=str(tmp_path / "out"), cache=False,
        threads=2)), argv=[])
    curve = result["training"]["loss_curve"]
    assert len(curve) == 2 and curve[1] < curve[0], curve
    assert result["training"]["targets_cached"]  # CoVR-2's fixed target features
    assert result["protocol"]["gallery_model"]["rule"] == "the model before fine-tuning"
    assert result["protocol"]["fingerprint"]["gallery_features"].startswith("fixed: the model before fine-tuning")
    saved = json.loads((tmp_path / "out").glob("*.json").__next__().read_text())
    assert saved["metrics"]["composed f(q,t)"]["R@50"] > 0
