"""The command line: help, clear errors without tracebacks, fast failure."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness.run import build_parser, main
from tests.conftest import REPO


def test_help_lists_backbones_and_suites():
    text = build_parser().format_help()
    for name in ("blip-tiny", "blip-base", "blip-large", "cirr", "shapes"):
        assert name in text


def test_help_lists_the_clip_backbones_and_every_composer():
    from backbones.composers import COMPOSERS

    text = " ".join(build_parser().format_help().split())
    for name in ("clip-tiny", "clip-base-patch32", "clip-large-patch14", "clip-bigg", *COMPOSERS.names()):
        assert name in text, name
    assert "--composer" in text


def test_a_clip_checkpoint_missing_offline_is_named_before_any_work(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run(
        [sys.executable, "-m", "harness.run", "--backbone", "clip-large-patch14", "--suite", "cirr",
         "--composer", "combiner", "--out", str(tmp_path / "out")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "openai/clip-vit-large-patch14" in proc.stderr and "--data-root" in proc.stderr
    assert not (tmp_path / "out").exists()  # a failed command writes nothing


def test_typo_gets_a_suggestion(capsys):
    assert main(["--backbone", "blip-larg", "--suite", "shapes"]) == 2
    err = capsys.readouterr().err
    assert "unknown backbone 'blip-larg'" in err and "'blip-large'" in err


def test_fp16_on_cpu_is_refused(capsys, tmp_path):
    code = main(["--precision", "fp16", "--device", "cpu", "--out", str(tmp_path), "--suite", "cirr",
                 "--data-root", str(tmp_path)])
    assert code == 2


def test_blip_large_on_cirr_without_weights_or_images_fails_fast(tmp_path):
    """No weights and no data: a message saying what is missing and where it goes,
    before any work (no model loaded, nothing embedded), and no traceback. Not timed:
    a test must not depend on the machine's speed."""
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run(
        [sys.executable, "-m", "harness.run", "--backbone", "blip-large", "--suite", "cirr"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "Salesforce/blip-itm-large-coco" in proc.stderr and "--checkpoint" in proc.stderr
    assert "--data-root" in proc.stderr and "captions/cap.rc2" in proc.stderr
    assert "backbone blip-large" not in proc.stdout and "embedding" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("args,needle", [
    (["--suite", "cirr", "--data-root", "/nonexistent/cirr"], "does not exist"),
    (["--split", "test2"], "not 'test2'"),
])
def test_bad_inputs_are_explained(args, needle, capsys, tmp_path):
    assert main([*args, "--out", str(tmp_path), "--no-train"]) == 2
    assert needle in capsys.readouterr().err


def test_every_choice_a_flag_takes_is_in_its_help():
    """Each flag's help names what it accepts: its choices (shown unless a metavar hides
    them), the registries the epilog lists, --mix's modes, the checkpoint formats."""
    from backbones import BACKBONES, CHECKPOINT_FORMATS
    from harness.mixing.modes import MODES
    from harness.suites import SUITES
    from harness.training.recipes import RECIPES

    parser = build_parser()
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.choices and action.option_strings != ["-h", "--help"]:
            shown = formatter._format_action_invocation(action) + " " + (action.help or "")
            missing = [c for c in action.choices if str(c) not in shown]
            assert not missing, f"{action.option_strings}: {missing} not in its help"
    epilog = parser.epilog
    assert all(name in epilog for name in [*BACKBONES.names(), *SUITES.names(), *RECIPES])
    mix = next(a for a in parser._actions if "--mix" in a.option_strings)
    assert all(mode in mix.help for mode in MODES)
    formats = next(a for a in parser._actions if "--checkpoint-format" in a.option_strings)
    assert tuple(formats.choices) == CHECKPOINT_FORMATS and "covr2" in CHECKPOINT_FORMATS


def test_score_help_lists_its_choices():
    proc = subprocess.run([sys.executable, "-m", "harness.score", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    text = " ".join(proc.stdout.split())
    for choices in ("{covr,clip4cir,cirplant}", "{pessimistic,optimistic}", "{remove,keep,covr-order}",
                    "{auto,max,mean}", "{caption,shared-concept}", "{covr,none}"):
        assert choices in text
    assert all(name in text for name in ("cirr", "fashioniq", "circo", "webvid-covr"))
