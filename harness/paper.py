"""Published CIRR numbers the harness compares against (CIRR test1 unless said),
kept as data with their source."""

from __future__ import annotations

PAPER_CIRR = [
    # row, R@1, R@5, R@10, R@50, source
    ("BLIP-L, paper (seed table)", 49.16, 79.76, 88.65, 97.49, "seed presentation"),
    ("BLIP-L, batch 16", 27.03, 67.42, 80.08, 95.07, "seed presentation"),
    ("BLIP-B, batch 16", 21.84, 59.02, 73.60, 93.23, "seed presentation"),
    ("BLIP-L COCO, fine-tuned on CIRR", 48.84, 78.05, 86.10, 94.19, "CoVR (old gallery)"),
    ("CoVR-BLIP-2, fine-tuned on CIRR", 50.43, 81.08, 88.89, 98.05, "CoVR-2 as cited"),
]
