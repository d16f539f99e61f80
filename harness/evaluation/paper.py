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

# FashionIQ val, Recall@K per category and the mean over the three; keys are the
# harness's metric names (harness/evaluation/protocols/fashioniq.py). Missing = not reported.
PAPER_FASHIONIQ = [
    {"row": "CoVR-BLIP, fine-tuned on FashionIQ", "source": "CoVR (Ventura et al.), FashionIQ val",
     "metrics": {"dress R@10": 44.55, "dress R@50": 69.03, "shirt R@10": 48.43, "shirt R@50": 67.42,
                 "toptee R@10": 52.60, "toptee R@50": 74.31, "avg R@10": 48.53, "avg R@50": 70.25}},
    {"row": "CoVR-BLIP, zero-shot (WebVid-CoVR)", "source": "CoVR (Ventura et al.), FashionIQ val",
     "metrics": {"avg R@10": 27.70, "avg R@50": 44.63}},
]

# CIRCO test (scored by its server), mAP@K (harness/evaluation/protocols/circo.py).
PAPER_CIRCO = [
    {"row": "CoVR-BLIP, zero-shot (WebVid-CoVR)", "source": "CoVR (Ventura et al.), CIRCO test",
     "metrics": {"mAP@5": 21.43, "mAP@10": 22.33, "mAP@25": 24.47}},
]
