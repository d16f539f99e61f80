"""Reading original checkpoint files (backbones/checkpoint_files.py): CoVR's Lightning
Fabric .ckpt with its pickled schedule, files that hold pickled objects (refused
without running them), unreadable files, and the file hash in the provenance."""

from __future__ import annotations

import hashlib
import sys
import types

import pytest
import torch

from backbones.checkpoint_files import FORMATS, file_sha256, load_original_state_dict
from backbones.convert import convert_checkpoint
from harness.core.errors import HarnessError
from tests.originals.blip import (
    converted_model,
    covr_model_state_dict,
    inputs,
    tiny_config,
)

torch.set_num_threads(1)




# -- 3: CoVR's Lightning Fabric .ckpt --------------------------------------------------------


class CosineSchedule:
    """Stands for CoVR's src/tools/scheduler.py class, which Fabric pickles whole."""

    def __init__(self):
        self.min_lr, self.init_lr, self.decay_rate, self.max_epochs = 0, 1e-5, 0.05, 5


@pytest.fixture()
def covr_schedule_module(monkeypatch):
    """Make the stand-in picklable under CoVR's module path, src.tools.scheduler."""
    for name in ("src", "src.tools", "src.tools.scheduler"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setattr(CosineSchedule, "__module__", "src.tools.scheduler")
    sys.modules["src.tools.scheduler"].CosineSchedule = CosineSchedule
    return CosineSchedule


def save_covr_ckpt(path, model_state, schedule_class):
    """As CoVR's train.py: fabric.save(path, {"epoch", "model", "optimizer", "scheduler"})."""
    optimizer = {"state": {}, "param_groups": [{"lr": 1e-5, "weight_decay": 0.05, "params": [0, 1]}]}
    torch.save({"epoch": 4, "model": model_state, "optimizer": optimizer, "scheduler": schedule_class()}, path)


@pytest.mark.parametrize("prefix", ["", "module."])  # CoVR's load_checkpoint strips "module."
def test_covr_ckpt_converts_like_the_blip_checkpoint(tmp_path, original, blip_file, covr_schedule_module, prefix):
    path = tmp_path / "ckpt_4.ckpt"
    model_state = {prefix + key: value for key, value in covr_model_state_dict(original).items()}
    save_covr_ckpt(path, model_state, covr_schedule_module)

    covr, report = convert_checkpoint(path, "covr", tiny_config())
    blip, _ = convert_checkpoint(blip_file, "blip", tiny_config())

    assert report.ok and report.left_at_init == ["itm_head.weight", "itm_head.bias"], report
    assert report.dropped == ["text_encoder.embeddings.position_ids"]
    assert covr.keys() == blip.keys() - {"itm_head.weight", "itm_head.bias"}
    for key in covr:
        assert torch.equal(covr[key], blip[key]), key
    pixels, _, _ = inputs()
    with torch.no_grad():
        got = converted_model(covr, report.left_at_init).vision_model(pixel_values=pixels).last_hidden_state
        want = converted_model(blip).vision_model(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_covr_ckpt_needs_its_itm_head_named_as_left_at_init(tmp_path, original, covr_schedule_module):
    path = tmp_path / "ckpt_4.ckpt"
    save_covr_ckpt(path, covr_model_state_dict(original), covr_schedule_module)
    state_dict, _ = convert_checkpoint(path, "covr", tiny_config())
    with pytest.raises(HarnessError, match=r"missing \(2\): itm_head.bias, itm_head.weight"):
        converted_model(state_dict)


def test_covr_ckpt_read_as_blip_format_is_refused_with_a_hint(tmp_path, original, covr_schedule_module):
    path = tmp_path / "ckpt_4.ckpt"
    save_covr_ckpt(path, covr_model_state_dict(original), covr_schedule_module)
    with pytest.raises(HarnessError, match="src.tools.scheduler.CosineSchedule") as caught:
        load_original_state_dict(path, "blip")
    assert "meant to be 'covr'" in str(caught.value)


def test_covr_ckpt_without_model_entry_is_refused(tmp_path, original):
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"model." + key: value for key, value in original.items()}}, path)
    with pytest.raises(HarnessError, match=r"no 'model' entry \(top-level keys: state_dict\)"):
        load_original_state_dict(path, "covr")


# -- 4: a checkpoint that does not fit ----------------------------------------------------


# -- 5: files that are not plain weights ----------------------------------------------------

EXECUTED: list[str] = []


def record_execution(tag: str) -> str:
    EXECUTED.append(tag)
    return tag


class Payload:
    """Unpickling this would call record_execution: proof that code ran."""

    def __reduce__(self):
        return (record_execution, ("payload ran",))


@pytest.mark.parametrize("fmt", FORMATS)
def test_pickled_objects_are_refused_without_running_them(tmp_path, original, fmt):
    path = tmp_path / "with_object.pth"
    torch.save({"model": original, "extra": Payload()}, path)
    with pytest.raises(HarnessError, match="weights_only=True") as caught:
        load_original_state_dict(path, fmt)
    assert "record_execution" in str(caught.value) and "arbitrary code" in str(caught.value)
    assert EXECUTED == []


def test_unreadable_and_absent_files_and_unknown_formats(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(HarnessError, match="could not be read as a torch checkpoint"):
        load_original_state_dict(garbage, "blip")
    with pytest.raises(HarnessError, match="does not exist"):
        load_original_state_dict(tmp_path / "absent.pth", "blip")
    with pytest.raises(HarnessError, match="known formats: blip, covr"):
        load_original_state_dict(garbage, "lavis")


# -- 6: provenance --------------------------------------------------------------------------


def test_sha256_is_the_file_hash(blip_file):
    want = hashlib.sha256(blip_file.read_bytes()).hexdigest()
    assert file_sha256(blip_file) == want
    assert convert_checkpoint(blip_file, "blip", tiny_config())[1].sha256 == want
