"""What one epoch of fine-tuning goes over (`--iterate`, recorded in the training block).

- `rows` (default): every annotation row once per epoch.
- `targets`: one row per distinct target per epoch, drawn (seeded) among the rows
  that share it. This is CoVR's `iterate: pth2` for WebVid-CoVR
  (lucas-ventura/CoVR configs/data/webvid-covr.yaml line 5): its dataset's length
  is the number of unique `pth2` (src/data/webvid_covr.py lines 256-260, 328-329)
  and each item samples one of that target's rows (lines 331-336). Where every
  target has one row the two are the same.
"""

from __future__ import annotations

import torch

ITERATE = ("rows", "targets")


def units(queries: list, iterate: str) -> list[list]:
    """The queries grouped into what an epoch visits once: each row alone, or the rows
    of each target (in order of first appearance)."""
    if iterate == "rows":
        return [[q] for q in queries]
    if iterate != "targets":
        raise ValueError(f"iterate must be one of {ITERATE}, got {iterate!r}")
    groups: dict = {}
    for q in queries:
        groups.setdefault(q.target, []).append(q)
    return list(groups.values())


def draw(groups: list[list], generator: torch.Generator) -> list:
    """One query of each unit for this epoch. Single-row units draw nothing, so the
    `rows` order stream is the one it always was."""
    if all(len(group) == 1 for group in groups):
        return [group[0] for group in groups]
    picks = torch.rand(len(groups), generator=generator, dtype=torch.float64).tolist()
    return [group[min(int(u * len(group)), len(group) - 1)] for group, u in zip(groups, picks)]
