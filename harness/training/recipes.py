"""Fine-tuning recipes: named sets of hyperparameters a run starts from.

`covr` is CoVR's CIRR recipe for pretrained BLIP (AdamW lr 1e-4, weight decay
0.05, 6 epochs, cosine schedule stepped per epoch, HN-NCE alpha 1 beta 0.5,
temperature 0.07, ViT and vision_proj frozen (text encoder and text_proj
trained), total batch 1024 across GPUs), run through DeepSpeed ZeRO-2. On one
GPU, add `--grad-cache-chunk 64` (or what fits) to keep the batch at 1024.

`tiny` is for blip-tiny trained from random weights on shapes on 2 CPU cores, chosen by the sweep in benches/recipe_sweep.py (every run's
results file in results/recipe_sweep/, one summary.json; three seeds per
configuration, composed R@1 on shapes val): InfoNCE (HN-NCE with beta 0; HN-NCE's
hard-negative weighting is for fine-tuning a pretrained model and slowed learning
from random weights), batch 64, lr 5e-4 with 300 warm-up steps, 6 epochs, clipping
1.0, the vision tower trained since no pretrained one exists. It had the highest
mean and the smallest spread over its seeds; HN-NCE stayed lower on every seed, and
each other InfoNCE configuration had a seed 18 or more points below its best (with
batch 128 and a short warm-up, a seed sat on a plateau for three epochs, loss near
2 ln(batch)). The figures: results/recipe_sweep/summary.json. `tiny-v1` is the
recipe before that sweep (HN-NCE, lr 1e-3, 100 warm-up steps, 3 epochs), kept so
that its figures can be put beside the new ones.

`pic2word` trains the `pic2word` composer's mapping network on images alone
(harness/training/image_pairs.py), CLIP frozen. Pic2Word's (google-research/
composed_image_retrieval at 8c05329, README.md:44-56 and src/): AdamW lr 1e-4,
weight decay 0.1, a cosine schedule per step after a linear warm-up
(src/main.py:137-147), no gradient clipping, its loss (harness/training/losses.py
`pic2word`) at the frozen CLIP's logit scale, 100 for OpenAI's CLIP (temperature
0.01; src/trainer.py:109). Its batch is 128 per GPU (README.md:49, src/params.py:168)
with features gathered over every GPU (src/trainer.py:111-134), so its contrast
spans 128 x the GPU count, which the repository does not state. Ours: 128 over all
ranks (its per-GPU batch, what one CPU step holds), 5 epochs (Pic2Word: 30 over
Conceptual Captions' ~3M images) and 100 warm-up steps (Pic2Word: 10,000), sized
for the default shapes train split's 18,945 distinct images, 148 steps an epoch.
One ad-hoc check: a clip-tiny pre-trained briefly (contrastive stage, 4 epochs of
`tiny` on 1,000 shapes sets), then these settings on those sets' 5,256 images,
took the loss from 9.1 to 0.29 in 5 epochs (chance: ln 128 = 4.85). Where our
engine differs from Pic2Word's: AdamW with torch's betas (0.9, 0.999) and eps 1e-8
(Pic2Word's for ViT CLIPs: 0.98 and 1e-6, src/params.py:27-28), and weight decay on
the biases too (Pic2Word exempts them, src/main.py:127-131). For a CLIP whose logit
scale is not 100 (clip-tiny's starts at 1/0.07), Pic2Word's rule is --temperature
1/scale.
"""

from __future__ import annotations

RECIPES: dict[str, dict] = {
    "covr": dict(
        epochs=6, batch_size=1024, lr=1e-4, weight_decay=0.05, warmup_steps=0,
        grad_clip=0.0, temperature=0.07, hnnce_alpha=1.0, hnnce_beta=0.5,
        train_vision=False, schedule="epoch", deepspeed="configs/deepspeed/zero2.json",
    ),
    "tiny": dict(
        epochs=6, batch_size=64, lr=5e-4, weight_decay=0.05, warmup_steps=300,
        grad_clip=1.0, temperature=0.07, hnnce_alpha=1.0, hnnce_beta=0.0,
        train_vision=True, schedule="step",
    ),
    "tiny-v1": dict(
        epochs=3, batch_size=64, lr=1e-3, weight_decay=0.05, warmup_steps=100,
        grad_clip=1.0, temperature=0.07, hnnce_alpha=1.0, hnnce_beta=0.5,
        train_vision=True, schedule="step",
    ),
    "pic2word": dict(
        epochs=5, batch_size=128, lr=1e-4, weight_decay=0.1, warmup_steps=100,
        grad_clip=0.0, temperature=0.01, hnnce_alpha=1.0, hnnce_beta=0.0,
        train_vision=False, schedule="step", loss="pic2word",
    ),
}
SCHEDULES = ("step", "epoch")
# The re-ranker's learning rate (--rerank-lr) under each recipe: BLIP's COCO retrieval
# fine-tuning rate for the pretrained models (salesforce/BLIP configs/retrieval_coco.yaml
# line 16, init_lr 1e-5); for blip-tiny the best of 1e-4, 5e-4 and 1e-3 on seed 0 of the
# default task (one run each, an ad-hoc check: the reference runs report its seeds).
RERANK_LR = {"covr": 1e-5, "tiny": 1e-3, "tiny-v1": 1e-3}


def default_recipe(backbone: str) -> str:
    return "tiny" if backbone == "blip-tiny" else "covr"
