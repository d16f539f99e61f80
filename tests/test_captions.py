"""Caption cleaning (harness/suites/captions.py) on the real CIRR captions, against
CoVR's rule written out again here character by character, and its place in the
embedding cache key and in the results."""

from __future__ import annotations

import json

import pytest

from backbones.blip_tiny import build_random
from harness.core.errors import HarnessError
from harness.evaluation.embedding_cache import cache_path, identity
from harness.suites.captions import clean, cleaned, pre_caption
from harness.suites.cirr import CirrSuite
from tests.conftest import CIRR_ANNOTATIONS

PUNCTUATION = set('.!"()*#:;~')


def covr_rule(caption: str, max_words: int = 30) -> str:
    """CoVR's pre_caption (src/data/utils.py), without regular expressions."""
    text = "".join(" " if ch in PUNCTUATION else ch for ch in caption.lower())
    out, previous_space = [], False
    for ch in text:  # runs of 2+ whitespace characters become one space
        out.append(ch)
        if ch.isspace() and previous_space:
            out.pop()
            out[-1] = " "
        previous_space = ch.isspace()
    text = "".join(out)
    while text.endswith("\n"):
        text = text[:-1]
    text = text.strip(" ")
    words = text.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else text


@pytest.mark.parametrize("split, queries, ending_in_a_period", [("val", 4181, 2556), ("test1", 4148, 2394)])
def test_real_cirr_captions_cleaned_as_covr_does(split, queries, ending_in_a_period):
    captions = [q["caption"] for q in json.loads((CIRR_ANNOTATIONS / "captions" / f"cap.rc2.{split}.json").read_text())]
    assert len(captions) == queries
    assert sum(c.endswith(".") for c in captions) == ending_in_a_period
    ours = [pre_caption(c) for c in captions]
    assert ours == [covr_rule(c) for c in captions]
    assert all(not c.endswith(".") and c == c.lower() for c in ours)
    assert [pre_caption(c) for c in ours] == ours  # idempotent
    long = [c for c in captions if len(c.split(" ")) > 30]
    assert long and all(len(pre_caption(c).split(" ")) <= 30 for c in long)
    changed = sum(a != b for a, b in zip(captions, ours))
    assert changed > ending_in_a_period  # upper case and other punctuation change more


def test_the_rule_on_cases_one_can_see():
    assert pre_caption("Make the dog WHITE.") == "make the dog white"
    assert pre_caption('Add a "hat" (red); remove  the   cat!') == "add a hat red remove the cat"
    assert pre_caption("a, b? c-d e'f") == "a, b? c-d e'f"  # CoVR keeps commas, ? - '
    assert pre_caption(" ".join(f"w{i}" for i in range(40))) == " ".join(f"w{i}" for i in range(30))
    assert clean("Keep It.", "none") == "Keep It."
    with pytest.raises(HarnessError, match="caption cleaning"):
        clean("x", "lowercase")


def test_cleaning_is_in_the_cache_key_and_the_provenance(cirr_root):
    data = CirrSuite(cirr_root).load("val")
    backbone = build_random(seed=0)
    covr, none = cleaned(data, "covr"), cleaned(data, "none")
    assert covr.provenance["caption_cleaning"] == "covr" and none.provenance["caption_cleaning"] == "none"
    assert covr.provenance["captions_changed_by_cleaning"] > 3000
    assert none.provenance["captions_changed_by_cleaning"] == 0
    keys = {cache_path(cirr_root, identity(backbone, d, "fp32")) for d in (covr, none)}
    assert len(keys) == 2
    assert covr.queries[0].caption == pre_caption(data.queries[0].caption)
