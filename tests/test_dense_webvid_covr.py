"""Dense-WebVid-CoVR (harness/suites/dense_webvid_covr.py): WebVid-CoVR's reader and
video handling with long modification texts, the reference description column required,
and the text length a protocol field that reaches the backbone, the protocol block and
the fingerprint."""

from __future__ import annotations

import csv

import pytest
import torch

from harness.config import RunConfig
from harness.core.errors import HarnessError
from harness.suites import dense_webvid_covr as dense
from harness.suites import webvid_generator
from harness.suites.captions import cleaned
from harness.suites.webvid_covr import WebVidCoVRSuite

SMALL = webvid_generator.WebVidSpec(frames=8, references={"train": 4, "val": 2, "test": 3})
IDENTITY = {**webvid_generator.describe(SMALL), **dense.GENERATOR}


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dense-webvid") / "data"
    webvid_generator.generate(root, SMALL, dense.dense_texts, IDENTITY)
    return root


def test_texts_are_dense_and_cleaning_cuts_them_to_thirty_words(small_root):
    data = dense.DenseWebVidCoVRSuite(small_root).load("test")
    words = [len(q.caption.split()) for q in data.queries]
    assert min(words) > 15 and max(words) > 30  # WebVid-CoVR's stand-in: 4 to 12 words
    text = data.provenance["text"]
    assert text["text_length"] == 64 and text["covr_cleaning_words"] == 30
    assert text["texts_over_cleaning_words"] == sum(w > 30 for w in words) > 0
    assert max(len(q.caption.split()) for q in cleaned(data, "covr").queries) == 30  # BSE-CoVR's pre_caption
    with (small_root / "annotation" / "webvid-covr" / "webvid8m-covr_test.csv").open() as handle:
        assert all(row["txt1"].startswith("the video shows") for row in csv.DictReader(handle))


def test_a_file_without_the_reference_description_is_refused(small_root, tmp_path):
    path = small_root / "annotation" / "webvid-covr" / "webvid8m-covr_val.csv"
    rows = list(csv.DictReader(path.open()))
    bad = tmp_path / "webvid8m-covr_val.csv"
    with bad.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["pth1", "pth2", "edit", "scores"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(HarnessError, match=r"webvid8m-covr_val.csv: no column txt1"):
        dense.check_columns(bad)
    dense.check_columns(path)


def test_text_length_is_an_option_of_this_suite_only(small_root):
    assert dense.DenseWebVidCoVRSuite(small_root, text_length=32).load("val").provenance["text"]["text_length"] == 32
    with pytest.raises(HarnessError, match="at least 2"):
        dense.DenseWebVidCoVRSuite(small_root, text_length=1)
    config = RunConfig.resolve({"suite": "webvid-covr", "text_length": 32})
    with pytest.raises(HarnessError, match="--text-length applies to dense-webvid-covr"):
        config.suite_options(WebVidCoVRSuite)
    options = RunConfig.resolve({"suite": "dense-webvid-covr", "text_length": 32}).suite_options(
        dense.DenseWebVidCoVRSuite)
    assert options["text_length"] == 32
    assert RunConfig.resolve({"suite": "dense-webvid-covr"}).hash() != RunConfig.resolve(
        {"suite": "dense-webvid-covr", "text_length": 32}).hash()


def test_the_text_length_truncates_the_tokens_the_backbone_reads(small_root):
    from backbones import BACKBONES
    from backbones.base import LoadOptions
    from harness.pipeline import with_text_length

    backbone = BACKBONES.get("blip-tiny").load(LoadOptions(seed=0), torch.device("cpu"))
    text = dense.DenseWebVidCoVRSuite(small_root).load("test").queries[0].caption
    lengths = {}
    for length in (12, 64):
        with_text_length(backbone, dense.DenseWebVidCoVRSuite(small_root, text_length=length))
        assert backbone.max_text_len == backbone.eval_max_text_len == length
        lengths[length] = int(backbone.tokenize([text])["attention_mask"].sum())
    assert lengths[12] == 12 < lengths[64]
    with pytest.raises(HarnessError, match="exceeds the 128 text positions"):
        with_text_length(backbone, dense.DenseWebVidCoVRSuite(small_root, text_length=500))


def test_fine_tuned_run_records_the_text_length(small_root, tmp_path):
    """blip-tiny fine-tuned one epoch on the dense train split, scored on test: the text
    length in the protocol block and the fingerprint, BSE-CoVR's row in the table."""
    from harness.pipeline import run

    result = run(RunConfig.resolve({"suite": "dense-webvid-covr", "data_root": str(small_root), "out": str(tmp_path),
                                    "epochs": 1, "cache": False, "text_length": 48}), argv=["(test)"])
    assert result["protocol"]["text"]["text_length"] == 48
    assert result["protocol"]["fingerprint"]["text_length"] == 48
    assert set(result["metrics"]) == {"composed f(q,t)", "image-only q", "text-only t"}
    markdown = next(tmp_path.glob("dense-webvid-covr_test_*.md")).read_text()
    assert "BSE-CoVR" in markdown and "71.30" in markdown and "text_length: 48 vs 64" in markdown
