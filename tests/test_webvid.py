"""WebVid-CoVR (harness/suites/webvid_covr.py): the CSV reader, frame sampling and
pooling against hand computations, self-similarity removal, videos checked up
front, and the generated clips end to end (training, scoring, mixing)."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from harness.core.errors import HarnessError
from harness.suites import webvid_covr as wv
from harness.suites import webvid_generator
from harness.suites.video_files import sampled_frames

SMALL = webvid_generator.WebVidSpec(frames=8, target_frames=3, references={"train": 6, "val": 2, "test": 4})


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("webvid") / "data"
    webvid_generator.generate(root, SMALL)
    return root


def test_frames_are_sampled_from_the_middle_of_equal_spans():
    assert sampled_frames(15, 300) == [9, 29, 49, 69, 89, 109, 129, 149, 169, 189, 209, 229, 249, 269, 289]
    assert sampled_frames(3, 12) == [1, 5, 9]
    assert sampled_frames(15, 4) == [0, 1, 2, 3]  # a short video gives what it has


def test_pooling_weights_by_hand():
    assert wv.pooling_weights("middle", 5, (), "x") == [0, 0, 1, 0, 0]
    assert wv.pooling_weights("mean", 4, (0.3, 0.1, 0.2, 0.0), "x") == [0.25] * 4
    scores = (0.30, 0.25, 0.20)
    exps = [math.exp(s / 0.1) for s in scores]
    assert wv.pooling_weights("query", 3, scores, "x") == pytest.approx([e / sum(exps) for e in exps])
    assert wv.pooling_weights("query", 3, (), "x") == pytest.approx([1 / 3] * 3)  # no scores: uniform
    with pytest.raises(HarnessError, match="2 scores for the 3 frames"):
        wv.pooling_weights("query", 3, (0.1, 0.2), "file.csv, line 4")


def test_gallery_embedding_pools_normalised_frames(small_root):
    from harness.evaluation.embed import pooled_items

    data = wv.read_webvid(small_root, "test", "webvid-covr", wv.VideoOptions(target_frames=3))
    item = data.gallery[0]
    frames = data.frames[item]
    assert len(frames) == 3 and sum(w for _, w in frames) == pytest.approx(1.0)
    row = {f: i for i, (f, _) in enumerate(frames)}
    emb = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    expected = torch.nn.functional.normalize(sum(w * emb[i] for i, (_, w) in enumerate(frames)), dim=-1)
    torch.testing.assert_close(pooled_items(data, [item], emb, row)[0], expected)
    middle = wv.read_webvid(small_root, "test", "webvid-covr", wv.VideoOptions(pooling="middle", target_frames=3))
    assert [f for f, _ in middle.frames[item]] == [frames[1][0]]  # the middle of the three sampled


def test_the_query_frame_is_the_middle_one_or_a_seeded_random_one(small_root):
    data = wv.read_webvid(small_root, "test", "webvid-covr", wv.VideoOptions(target_frames=3))
    assert all(q.reference.endswith("#4") for q in data.queries)  # 8 frames: the middle is 4
    shuffled = wv.read_webvid(small_root, "test", "webvid-covr", wv.VideoOptions("random", "query", 3))
    again = wv.read_webvid(small_root, "test", "webvid-covr", wv.VideoOptions("random", "query", 3))
    assert [q.reference for q in shuffled.queries] == [q.reference for q in again.queries]
    assert len({q.reference.split("#")[1] for q in shuffled.queries}) > 1


def test_the_reference_video_is_removed_from_its_ranking():
    from harness.evaluation.embed import SplitEmbeddings
    from harness.evaluation.protocols import PROTOCOLS, ScoringRules
    from harness.suites.base import Query, SplitData

    gallery = ["1/10", "1/11", "1/12"]
    queries = [Query(0, "1/10#4", "edit", "1/11", reference_item="1/10"),  # its reference is a gallery video
               Query(1, "1/12#4", "edit", "1/10", reference_item="1/12")]
    data = SplitData("webvid-covr", "test", queries, gallery, {}, True, "")
    g = torch.eye(3)
    composed = torch.stack([torch.tensor([1.0, 0.9, 0.0]), torch.tensor([0.5, 0.0, 1.0])])  # reference scores best
    emb = SplitEmbeddings(gallery, g, torch.nn.functional.normalize(composed, dim=-1), None, None)
    metrics = PROTOCOLS.get("webvid").evaluate(data, emb, ScoringRules())["composed f(q,t)"]
    assert metrics["R@1"] == 100.0 and metrics["meanR3"] == 100.0


def _write_csv(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("text,message", [
    ("pth1,edit\n1/2,x\n", "no column pth2"),
    ("pth1,pth2,edit\n1/2,1/3,x\n12,1/3,y\n", "line 3: pth1 must be \"folder/id\""),
    ("pth1,pth2,edit,scores\n1/2,1/3,x,\"[0.1, oops]\"\n", "line 2: scores must be a list of numbers"),
    ("pth1,pth2,edit\n1/2,1/3,x,extra\n", "line 2: the row has a different number of fields"),
    ("pth1,pth2,edit\n1/2,1/3,\n", "line 2: the edit text is empty"),
])
def test_malformed_rows_name_the_file_and_line(tmp_path, text, message):
    path = _write_csv(tmp_path / "a.csv", text)
    with pytest.raises(HarnessError, match=message) as err:
        wv.read_rows(path)
    assert str(path) in str(err.value)


def test_a_missing_and_a_truncated_video_are_reported_up_front_by_name(small_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(small_root, root)
    videos = sorted((root / "WebVid/8M/train").rglob("3*.mp4"))  # test clips (val's start with 2)
    missing, truncated = videos[0], videos[1]
    missing.unlink()
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 3])
    with pytest.raises(HarnessError) as err:
        wv.read_webvid(root, "test", "webvid-covr", wv.VideoOptions(target_frames=3))
    text = str(err.value)
    assert f"{missing}: missing" in text and str(truncated) in text and "cannot be used" in text


@pytest.mark.slow
def test_generated_clips_train_score_and_mix(small_root, tmp_path):
    from harness.config import RunConfig
    from harness.pipeline import run

    config = RunConfig.resolve({"suite": "webvid-covr", "split": "test", "data_root": str(small_root),
                                "out": str(tmp_path / "out"), "epochs": 1, "batch_size": 8, "warmup_steps": 1,
                                "cache": False, "threads": 1, "mix": ["sweep"], "mix_step": 0.25,
                                "iterate": "targets"})
    result = run(config, argv=["(webvid test)"])
    assert result["training"]["iterate"] == "targets"  # CoVR's iterate: pth2, recorded
    assert list(result["metrics"]["composed f(q,t)"]) == ["R@1", "R@5", "R@10", "R@50", "meanR3", "meanR4"]
    assert result["protocol"]["video"]["pooling"] == "query" and result["training"]["train_queries"] == 30
    assert result["mixing"]["metrics"] == ["R@1", "R@5", "R@10", "R@50"]
    assert (tmp_path / "out" / result["mixing"]["heatmap"]).read_bytes()[:4] == b"\x89PNG"
    table = (tmp_path / "out" / next(p.name for p in (tmp_path / "out").glob("*.md"))).read_text()
    assert "meanR4" in table and "GuillaumeHJ/CoVR" in table and "--reference covr-order" in table


def test_video_options_on_an_image_suite_are_refused():
    from harness.config import RunConfig
    from harness.pipeline import preflight

    with pytest.raises(HarnessError, match="--video-pooling applies to video suites"):
        preflight(RunConfig.resolve({"suite": "shapes", "video_pooling": "mean"}))
