"""Original-layout checkpoints through the whole CLI: a tiny random BLIP .pth and a
CoVR .ckpt, evaluated as blip-base / blip-large on the real CIRR val annotations
with stand-in images, to a results file carrying the file's SHA-256."""

from __future__ import annotations

import hashlib
import json
import string
from collections import OrderedDict

import pytest
import torch
from transformers import BertTokenizer

from harness.run import main
from tests.originals.blip import (
    VOCAB,
    blip_retrieval_state_dict,
    covr_model_state_dict,
    tiny_config,
)


@pytest.fixture(scope="module")
def tiny_tokenizer_dir(tmp_path_factory):
    """A BERT tokenizer that fits the tiny checkpoint's 60-row embedding."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]"]
    tokens += list(string.ascii_lowercase) + ["##" + c for c in string.ascii_lowercase]
    assert len(tokens) <= VOCAB
    directory = tmp_path_factory.mktemp("tokenizer")
    BertTokenizer(vocab=OrderedDict((t, i) for i, t in enumerate(tokens))).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def original_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("original")
    original = blip_retrieval_state_dict(seed=4)
    torch.save({"model": original, "epoch": 5}, directory / "model_tiny_retrieval_coco.pth")
    torch.save({"epoch": 1, "model": covr_model_state_dict(original)}, directory / "ckpt_1.ckpt")
    tiny_config().to_json_file(directory / "config.json")
    return directory


@pytest.mark.slow
@pytest.mark.parametrize("backbone,file", [("blip-base", "model_tiny_retrieval_coco.pth"),
                                           ("blip-large", "ckpt_1.ckpt")])
def test_original_checkpoint_evaluates_cirr_val(backbone, file, original_files, tiny_tokenizer_dir,
                                                 cirr_root, tmp_path):
    path = original_files / file
    code = main(["--backbone", backbone, "--checkpoint", str(path), "--model-config",
                 str(original_files / "config.json"), "--tokenizer", str(tiny_tokenizer_dir),
                 "--suite", "cirr", "--data-root", str(cirr_root), "--split", "val",
                 "--out", str(tmp_path), "--no-cache"])
    assert code == 0
    (result_file,) = tmp_path.glob("*.json")
    result = json.loads(result_file.read_text())
    assert result["protocol"]["queries"] == 4181 and result["protocol"]["gallery_images"] == 2297
    assert result["backbone"]["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert result["backbone"]["image_size"] == 32  # from the checkpoint's architecture


def test_unknown_file_kind_and_format_are_explained(original_files, tmp_path, capsys):
    odd = tmp_path / "weights.bin"
    odd.write_bytes(b"")
    assert main(["--backbone", "blip-base", "--checkpoint", str(odd), "--suite", "shapes",
                 "--out", str(tmp_path), "--no-train"]) == 2
    assert "--checkpoint-format" in capsys.readouterr().err
    assert main(["--backbone", "blip-base", "--checkpoint", str(original_files / "ckpt_1.ckpt"),
                 "--checkpoint-format", "lavis", "--suite", "shapes", "--out", str(tmp_path)]) == 2
    assert "unknown checkpoint format 'lavis'" in capsys.readouterr().err


def test_missing_tokenizer_is_reported_before_work(original_files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["--backbone", "blip-base", "--checkpoint", str(original_files / "ckpt_1.ckpt"),
                 "--suite", "shapes", "--out", str(tmp_path)]) == 2
    assert "tokenizer bert-base-uncased" in capsys.readouterr().err


@pytest.mark.slow
def test_lavis_blip2_checkpoint_evaluates_cirr_val(cirr_root, tmp_path):
    from backbones.blip2 import tiny_blip2_config
    from backbones.blip_tiny import tiny_tokenizer
    from tests.originals.lavis import lavis_state_dict

    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    config = tiny_blip2_config(len(tokenizer), num_query_tokens=4)
    config.to_json_file(tmp_path / "config.json")
    path = tmp_path / "blip2_finetune_tiny.pth"
    torch.save({"model": lavis_state_dict(config, seed=2)}, path)
    code = main(["--backbone", "blip2", "--checkpoint", str(path), "--model-config", str(tmp_path / "config.json"),
                 "--tokenizer", str(tmp_path / "tokenizer"), "--suite", "cirr", "--data-root", str(cirr_root),
                 "--split", "val", "--out", str(tmp_path / "out"), "--no-cache"])
    assert code == 0
    (result_file,) = (tmp_path / "out").glob("*.json")
    result = json.loads(result_file.read_text())
    assert result["protocol"]["queries"] == 4181
    assert result["backbone"]["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert set(result["metrics"]) == {"composed f(q,t)", "image-only q", "text-only t"}
