"""Caption cleaning, a named step of the protocol applied to every query's text
before it reaches a model, in training and in evaluation.

- "covr": CoVR's `pre_caption` (lucas-ventura/CoVR src/data/utils.py, called with
  max_words=30 by its CIRR, FashionIQ, CIRCO and WebVid-CoVR datasets): lower-case;
  each of . ! " ( ) * # : ; ~ becomes a space; runs of whitespace become one space;
  leading and trailing spaces (and a trailing newline) go; then only the first 30
  space-separated words are kept. CoVR and CoVR-2 clean every caption this way.
- "none": the caption as the annotation file has it.

The rule is recorded in the split's provenance (`caption_cleaning`), so it is part
of the embedding cache key and of every result's protocol.
"""

from __future__ import annotations

import re
from dataclasses import replace

from harness.core.errors import HarnessError
from harness.suites.base import SplitData

CLEANINGS = ("covr", "none")
COVR_MAX_WORDS = 30
_PUNCTUATION = re.compile(r'[.!"()*#:;~]')
_SPACES = re.compile(r"\s{2,}")


def pre_caption(caption: str, max_words: int = COVR_MAX_WORDS) -> str:
    """CoVR's cleaning of one caption (see the module docstring)."""
    caption = _SPACES.sub(" ", _PUNCTUATION.sub(" ", caption.lower()))
    caption = caption.rstrip("\n").strip(" ")
    words = caption.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else caption


def clean(caption: str, rule: str) -> str:
    if rule == "covr":
        return pre_caption(caption)
    if rule == "none":
        return caption
    raise HarnessError(f"unknown caption cleaning {rule!r}; choose from {', '.join(CLEANINGS)}")


def cleaned(data: SplitData, rule: str) -> SplitData:
    """The split with every query's caption cleaned by `rule`, the rule recorded."""
    queries = [replace(q, caption=clean(q.caption, rule)) for q in data.queries]
    changed = sum(q.caption != c.caption for q, c in zip(data.queries, queries))
    return replace(data, queries=queries, provenance={
        **data.provenance, "caption_cleaning": rule, "captions_changed_by_cleaning": changed})
