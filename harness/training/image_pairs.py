"""Images alone as training rows: (image, "", the same image) for every distinct image
of a split, for the composers that train without captions (Pic2Word)."""

from __future__ import annotations

from dataclasses import replace

from harness.suites.base import Query, SplitData


def image_only(data: SplitData) -> SplitData:
    images = list(dict.fromkeys(i for q in data.queries for i in (q.reference, q.target) if i is not None))
    queries = [Query(n, image, "", image) for n, image in enumerate(images)]
    return replace(data, split=f"{data.split} (images)", queries=queries, gallery=images, groups={}, frames={},
                   candidates={})
