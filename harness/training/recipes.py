"""Fine-tuning recipes: named sets of hyperparameters a run starts from.

`covr` is CoVR's CIRR recipe for pretrained BLIP (AdamW lr 1e-4, weight decay
0.05, 6 epochs, cosine schedule stepped per epoch, HN-NCE alpha 1 beta 0.5,
temperature 0.07, ViT and vision_proj frozen (text encoder and text_proj
trained), total batch 1024 across GPUs), run through DeepSpeed ZeRO-2. On one
GPU, add `--grad-cache-chunk 64` (or what fits) to keep the batch at 1024. `tiny` is for blip-tiny trained from random weights on
shapes on 2 CPU cores: a higher learning rate with warm-up and clipping (a run
without them can stall at loss ln(batch)), the vision tower trained since no
pretrained one exists, and a small batch: on 2 cores the step count, not the
number of negatives, limits what a 3-minute run learns (measured on shapes val:
batch 64 / lr 2e-3 reached composed R@1 43.7 in 4 epochs where batch 128 / lr
5e-4 reached 13.5). lr 2e-3 collapsed one seed in three to a constant embedding
(loss stuck at 2 ln(batch)); lr 1e-3 trained every seed tried and learned faster.
"""

from __future__ import annotations

RECIPES: dict[str, dict] = {
    "covr": dict(
        epochs=6, batch_size=1024, lr=1e-4, weight_decay=0.05, warmup_steps=0,
        grad_clip=0.0, temperature=0.07, hnnce_alpha=1.0, hnnce_beta=0.5,
        train_vision=False, schedule="epoch", deepspeed="configs/deepspeed/zero2.json",
    ),
    "tiny": dict(
        epochs=3, batch_size=64, lr=1e-3, weight_decay=0.05, warmup_steps=100,
        grad_clip=1.0, temperature=0.07, hnnce_alpha=1.0, hnnce_beta=0.5,
        train_vision=True, schedule="step",
    ),
}
SCHEDULES = ("step", "epoch")


def default_recipe(backbone: str) -> str:
    return "tiny" if backbone == "blip-tiny" else "covr"
