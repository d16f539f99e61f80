"""Checkpoints: a file changed after it was written is reported from its recorded
checksum, and a load that does not fit the model names the missing and unexpected
weights instead of filling them with random values."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BlipForImageTextRetrieval

from backbones import convert
from backbones.base import LoadOptions
from backbones.blip_tiny import BlipTiny, build_random, tiny_config, tiny_tokenizer
from backbones.checkpoints import resolve
from backbones.integrity import CHECKSUMS, file_sha256, verify_checksums, write_checksums
from harness.config import RunConfig
from harness.core.errors import HarnessError
from harness.pipeline import preflight
from tests.reliability.faults import fault


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("checkpoint") / "tiny"
    build_random(seed=4).save(path)
    return path


@pytest.fixture
def checkpoint(saved, tmp_path):
    path = tmp_path / "tiny"
    shutil.copytree(saved, path)
    return path


def flip_one_byte(path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_saved_checkpoint_carries_checksums(checkpoint):
    lines = (checkpoint / CHECKSUMS).read_text().splitlines()
    assert any(line.endswith("  model.safetensors") for line in lines)
    assert verify_checksums(checkpoint) is True
    BlipTiny.load(LoadOptions(str(checkpoint)), torch.device("cpu"))


@fault("Checkpoints", "one bit flipped in model.safetensors of a checkpoint written by the harness",
       "preflight (before any data or model work) fails naming the file: 'SHA-256 differs from the recorded one'")
def test_tampered_weights_fail_preflight(checkpoint, small_shapes):
    flip_one_byte(checkpoint / "model.safetensors")
    config = RunConfig.resolve({"checkpoint": str(checkpoint), "data_root": str(small_shapes), "train": False})
    with pytest.raises(HarnessError) as err:
        preflight(config)
    assert "model.safetensors: SHA-256 differs from the recorded one" in str(err.value)
    assert str(checkpoint) in str(err.value)


@pytest.mark.parametrize("change", ["config edited", "weights removed", "extra weights file"])
@fault("Checkpoints", "config.json edited, model.safetensors removed, or an unrecorded weight file added",
       "error naming the file when the checkpoint is resolved")
def test_other_changes_are_reported(checkpoint, change):
    if change == "config edited":
        config = json.loads((checkpoint / "config.json").read_text())
        config["text_config"]["layer_norm_eps"] = 1e-3
        (checkpoint / "config.json").write_text(json.dumps(config))
        expected = "config.json: SHA-256 differs"
    elif change == "weights removed":
        (checkpoint / "model.safetensors").unlink()
        expected = "model.safetensors: missing"
    else:
        (checkpoint / "pytorch_model.bin").write_bytes(b"x")
        expected = "pytorch_model.bin: weight file not in the record"
    with pytest.raises(HarnessError, match=expected):
        resolve(str(checkpoint), None, "blip-tiny")


@fault("Checkpoints", "an original checkpoint file (.pth) whose `<file>.sha256` no longer matches",
       "error naming the file when it is resolved")
def test_tampered_single_file(tmp_path):
    weights = tmp_path / "model_base_retrieval_coco.pth"
    torch.save({"model": {"w": torch.zeros(4)}}, weights)
    (tmp_path / f"{weights.name}.sha256").write_text(f"{file_sha256(weights)}  {weights.name}\n")
    assert resolve(str(weights), None, "blip-base").kind == "file"
    flip_one_byte(weights, offset=-10)
    with pytest.raises(HarnessError, match="model_base_retrieval_coco.pth: SHA-256 differs"):
        resolve(str(weights), None, "blip-base")


def rewrite_weights(checkpoint, edit) -> None:
    """Change the weights and record the new checksums (a well-formed but wrong checkpoint)."""
    tensors = load_file(str(checkpoint / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(checkpoint / "model.safetensors"), metadata={"format": "pt"})
    write_checksums(checkpoint)


@fault("Checkpoints", "weights missing from a checkpoint directory, others unexpected (checksums re-recorded)",
       "load fails naming each missing and unexpected key (no random init)")
def test_strict_load_names_missing_and_unexpected_keys(checkpoint):
    def edit(tensors):
        del tensors["vision_proj.weight"]
        del tensors["text_proj.bias"]
        tensors["itm_head.extra"] = torch.zeros(3)

    rewrite_weights(checkpoint, edit)
    with pytest.raises(HarnessError) as err:
        BlipTiny.load(LoadOptions(str(checkpoint)), torch.device("cpu"))
    message = str(err.value)
    assert "2 missing, 1 unexpected" in message
    assert "missing (2): text_proj.bias, vision_proj.weight" in message
    assert "unexpected (1): itm_head.extra" in message


@fault("Checkpoints", "a weight with another shape (checksums re-recorded)",
       "load fails: 'does not fit BlipForImageTextRetrieval'")
def test_strict_load_refuses_other_shapes(checkpoint):
    def edit(tensors):
        tensors["vision_proj.weight"] = torch.zeros(3, 3)

    rewrite_weights(checkpoint, edit)
    with pytest.raises(HarnessError, match="does not fit BlipForImageTextRetrieval"):
        BlipTiny.load(LoadOptions(str(checkpoint)), torch.device("cpu"))


@fault("Checkpoints", "an original BLIP checkpoint with a key dropped and one renamed (conversion path)",
       "conversion fails naming the missing and the unexpected key")
def test_converted_checkpoint_names_keys(tmp_path):
    config = tiny_config(len(tiny_tokenizer()))
    state = dict(BlipForImageTextRetrieval(config).state_dict())
    state["text_proj.wrong_name"] = state.pop("text_proj.weight")
    with pytest.raises(HarnessError) as err:
        convert.load_converted(BlipForImageTextRetrieval(config), state)
    message = str(err.value)
    assert "missing (1): text_proj.weight" in message and "unexpected (1): text_proj.wrong_name" in message
