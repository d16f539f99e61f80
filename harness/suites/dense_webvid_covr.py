"""Dense-WebVid-CoVR (Thawakar et al., ICCV 2025, "Beyond Simple Edits"; code
OmkarThawakar/BSE-CoVR at ea3fa3c), WebVid-CoVR with dense modification texts ("around
seven times more" text than WebVid-CoVR's, README "Overview"), read from
--data-root in WebVid-CoVR's layout, or a generated stand-in with long texts.

Everything but the texts is WebVid-CoVR's (harness/suites/webvid_covr.py: the reader,
the video handling, the protocol): BSE-CoVR's loader is CoVR's (src/data/webvid_covr.py,
`pth1`, `pth2`, `edit`, `scores`; the query frame `vid_query_method: middle`,
configs/evaluate/webvid-covr.yaml), its evaluation CoVR's (evalute_scores.py lines 70-91:
the reference's own video masked with -10, R@1/5/10/50, meanR3, meanR4), and its files
the same names (README "Computing BLIP embeddings": annotation/webvid-covr/
webvid2m-covr_train.csv, webvid8m-covr_test.csv; configs/evaluate/webvid-covr.yaml
line 15). Rows also need `txt1`, the reference video's dense description, which
BSE-CoVR's loaders read for its own model (src/data/webvid_covr.py lines 164 and 371);
the harness's BLIP does not use it, and a file without it is refused.

The text length is this suite's protocol field (`--text-length`, recorded in the
protocol block and the fingerprint's `text_length`): BSE-CoVR tokenizes the
modification text with max_length=64 at evaluation (src/test/webvid_covr.py lines
56-62), the default here, and 35 in training (src/model/blip_cir.py lines 100-105, the
harness's training length too). Before that, its loader cuts every text to 30 words
(`pre_caption(ann["edit"], self.max_words)`, max_words=30, src/data/webvid_covr.py lines
233 and 370), as the harness's `--caption-cleaning covr` does; `--caption-cleaning none`
keeps the whole text for the tokenizer to truncate (without CoVR's lower-casing).
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

from harness.core.errors import HarnessError
from harness.suites import webvid_generator
from harness.suites.base import SplitData, register_suite
from harness.suites.captions import COVR_MAX_WORDS
from harness.suites.generated import default_root, ensure_generated
from harness.suites.scenes import caption_for
from harness.suites.webvid_covr import ANNOTATIONS, WebVidCoVRSuite, read_webvid

TEXT_LENGTH = 64  # BSE-CoVR src/test/webvid_covr.py line 60 (max_length=64)
TRAIN_TEXT_LENGTH = 35  # src/model/blip_cir.py line 104
COLUMNS = ("pth1", "pth2", "edit", "txt1")  # src/data/webvid_covr.py lines 163-164, 370-373
GENERATOR = {"generator": "dense_webvid_generator", "generator_version": 1}
BSE_CODE = ("BSE-CoVR: tokens max_length=64 at evaluation (src/test/webvid_covr.py lines 56-62), 35 in training "
            "(src/model/blip_cir.py lines 100-105); pre_caption max_words=30 first (src/data/webvid_covr.py lines "
            "233, 370)")


def _phrase(obj) -> str:
    where = "in the center" if obj.position == "center" else \
        f"{'on' if obj.position in ('left', 'right') else 'at'} the {obj.position}"
    return f"a {obj.size} {obj.colour} {obj.shape} {where}"


def dense_texts(edit, scene, target, rng: random.Random) -> dict[str, str]:
    """A long modification text (the edit's caption, then every object of the target
    scene), and dense descriptions of the reference and target scenes."""
    caption = caption_for(edit, scene, rng)
    described = " and ".join(_phrase(o) for o in target) or "nothing"
    return {"edit": f"{caption} so that the video shows {described} with the same white background",
            "txt1": "the video shows " + (" and ".join(_phrase(o) for o in scene) or "nothing"),
            "txt2": "the video shows " + described}


def check_columns(path: Path) -> None:
    """Dense-WebVid-CoVR's columns, before the WebVid-CoVR reader checks every row."""
    if not path.is_file():
        raise HarnessError(f"annotation file {path} is missing")
    with path.open(newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle), [])
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise HarnessError(f"{path}: no column {', '.join(missing)} (columns: {header}); Dense-WebVid-CoVR's "
                           "files carry the reference video's description txt1 (BSE-CoVR src/data/webvid_covr.py)")


@register_suite("dense-webvid-covr")
class DenseWebVidCoVRSuite(WebVidCoVRSuite):
    name = "dense-webvid-covr"
    options = (*WebVidCoVRSuite.options, "text_length")  # RunConfig fields it takes

    def __init__(self, data_root: Path | None = None, video_query_frame: str = "middle",
                 video_pooling: str = "query", text_length: int | None = None):
        self.text_length = TEXT_LENGTH if text_length is None else int(text_length)
        if self.text_length < 2:
            raise HarnessError(f"--text-length must be at least 2 tokens ([CLS] and one more), not {text_length}")
        if data_root is None:
            spec = webvid_generator.WebVidSpec()
            identity = {**webvid_generator.describe(spec), **GENERATOR}
            root = default_root("dense-webvid-covr", identity)
            ensure_generated(root, "dense-webvid-covr",
                             lambda: webvid_generator.generate(root, spec, dense_texts, identity))
            data_root = root
        super().__init__(data_root, video_query_frame, video_pooling)

    def load(self, split: str) -> SplitData:
        if split not in self.splits:
            raise HarnessError(f"dense-webvid-covr has splits {', '.join(self.splits)}, not {split!r}")
        check_columns(self.root / "annotation" / "webvid-covr" / ANNOTATIONS[split])
        data = read_webvid(self.root, split, self.name, self.video)
        words = [len(q.caption.split()) for q in data.queries]
        data.provenance["text"] = {
            "text_length": self.text_length, "train_text_length": TRAIN_TEXT_LENGTH,
            "covr_cleaning_words": COVR_MAX_WORDS, "mean_words": round(sum(words) / len(words), 2),
            "texts_over_cleaning_words": sum(w > COVR_MAX_WORDS for w in words), "bse_covr_code": BSE_CODE}
        if self.manifest is not None:
            data.provenance["manifest"] = self.manifest
        return data
