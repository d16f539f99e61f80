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
2 ln(batch)). The figures: results/recipe_sweep/summary.json. Since then, for speed
(the default run within 90 s on AMD Zen 5, 180 s on Zen 4), it trains under bf16
autocast with fp32 master weights where the CPU computes bf16 in hardware (avx512_bf16
or AMX; harness/core/precision.py), in fp32 elsewhere, for 5 epochs: the issue's bar,
composed R@1 at least 60 on average and 50 on every seed of 0-4, held. results/reference
holds it and the sweep's arithmetic (`--precision fp32 --epochs 6`) over seeds 0-4, run
one after the other, with their times. `tiny-v1` is the
recipe before that sweep (HN-NCE, lr 1e-3, 100 warm-up steps, 3 epochs), kept so
that its figures can be put beside the new ones.

`clip4cir` trains CLIP4Cir's Combiner (the `combiner` composer), CLIP frozen, as
ABaldrati/CLIP4Cir at dfed9f7 does in src/combiner_train.py. Every value is CLIP4Cir's:
Adam (:300; here AdamW with weight decay 0, the same update), lr 2e-5 (`--combiner-lr`,
:433), 300 epochs (:430), no scheduler (it builds none) and no gradient clipping, the
`clip4cir` loss (one direction, :347-350) at its fixed logit scale 100, i.e. temperature
0.01 (src/combiner.py:31), only the Combiner's parameters in the optimizer. Batch 4096
is its README's training command (README.md:245; the argparse default is 1024, :434).
It trains under fp16 autocast with a grad scaler (:347, :353-355): ours is --precision.
Ours, from the loop: each epoch's last partial batch is dropped (as its DataLoader's
drop_last=True, :296-297) and the batch is capped at the number of training queries, so
on a small split a step is the whole split. Nothing is scaled for clip-tiny: on the
default shapes data (20,000 training triplets) an epoch is 4 steps of 4096, about 3 s
each on one CPU thread (about an hour for 300 epochs); a shorter tiny recipe should come
from a sweep like `tiny`'s, not a guess.

`clip4cir-tiny` is that recipe scaled for clip-tiny on the generated suites: the same
optimizer, loss, logit scale and constant rate, 5 epochs of batch 256 at lr 1e-3, the
higher composed R@1 of lr 1e-3 and 1e-4 on seed 0 of shapes val (one run each: an
ad-hoc check, not a sweep; results/reference reports the recipe's seeds).

`clip-tiny` is clip-tiny's contrastive pre-training on the generated image-caption
pairs (harness/training/clip_stages.py): InfoNCE both ways at temperature 0.07, every
weight trained, batch 128, lr 5e-4 after 200 warm-up steps, 10 epochs of the 6,000 pairs;
set by hand from the `tiny` recipe (not swept).

`pic2word` trains the `pic2word` composer's mapping network on images alone
(harness/training/image_pairs.py), CLIP frozen. Pic2Word's (google-research/
composed_image_retrieval at 8c05329, README.md:44-56 and src/): AdamW lr 1e-4,
weight decay 0.1, a cosine schedule per step after a linear warm-up
(src/main.py:137-147), no gradient clipping, its loss (harness/training/losses.py
`pic2word`) at the frozen CLIP's logit scale, 100 for OpenAI's CLIP (temperature
0.01; src/trainer.py:109). Its batch is 128 per GPU (README.md:49, src/params.py:168)
with features gathered over every GPU (src/trainer.py:111-134), so its contrast
spans 128 x the GPU count, which the repository does not state. Ours: 128 over all
ranks (its per-GPU batch, what one CPU step holds), 30 epochs and 10,000 warm-up
steps as its README. `pic2word-tiny` scales it for clip-tiny on the 6,000 generated
images: 5 epochs and 100 warm-up steps, and temperature 0.07, clip-tiny's own scale
(its pre-training's fixed temperature), as Pic2Word's rule reads the CLIP's. One
ad-hoc check of those settings: a clip-tiny pre-trained briefly, then trained on
5,256 shapes images, went from loss 9.1 to 0.29 in 5 epochs (chance ln 128). Where our
engine differs from Pic2Word's: AdamW with torch's betas (0.9, 0.999) and eps 1e-8
(Pic2Word's for ViT CLIPs: 0.98 and 1e-6, src/params.py:27-28), and weight decay on
the biases too (Pic2Word exempts them, src/main.py:127-131). For a CLIP whose logit
scale is not 100 (clip-tiny's starts at 1/0.07), Pic2Word's rule is --temperature
1/scale.
"""

from __future__ import annotations

from harness.core.precision import NATIVE_BF16

RECIPES: dict[str, dict] = {
    "covr": dict(
        epochs=6, batch_size=1024, lr=1e-4, weight_decay=0.05, warmup_steps=0,
        grad_clip=0.0, temperature=0.07, hnnce_alpha=1.0, hnnce_beta=0.5,
        train_vision=False, schedule="epoch", deepspeed="configs/deepspeed/zero2.json",
    ),
    "tiny": dict(
        epochs=5, batch_size=64, lr=5e-4, weight_decay=0.05, warmup_steps=300,
        grad_clip=1.0, temperature=0.07, hnnce_alpha=1.0, hnnce_beta=0.0,
        train_vision=True, schedule="step", train_precision=NATIVE_BF16,
    ),
    "clip-tiny": dict(
        epochs=10, batch_size=128, lr=5e-4, weight_decay=0.05, warmup_steps=200,
        grad_clip=1.0, temperature=0.07, hnnce_alpha=1.0, hnnce_beta=0.0,
        train_vision=True, schedule="step",
    ),
    "tiny-v1": dict(
        epochs=3, batch_size=64, lr=1e-3, weight_decay=0.05, warmup_steps=100,
        grad_clip=1.0, temperature=0.07, hnnce_alpha=1.0, hnnce_beta=0.5,
        train_vision=True, schedule="step",
    ),
    "clip4cir": dict(
        epochs=300, batch_size=4096, lr=2e-5, weight_decay=0.0, warmup_steps=0,
        grad_clip=0.0, temperature=0.01, hnnce_alpha=1.0, hnnce_beta=0.0,
        train_vision=False, schedule="constant", loss="clip4cir",
    ),
    "clip4cir-tiny": dict(
        epochs=5, batch_size=256, lr=1e-3, weight_decay=0.0, warmup_steps=0,
        grad_clip=0.0, temperature=0.01, hnnce_alpha=1.0, hnnce_beta=0.0,
        train_vision=False, schedule="constant", loss="clip4cir",
    ),
    "pic2word": dict(
        epochs=30, batch_size=128, lr=1e-4, weight_decay=0.1, warmup_steps=10000,
        grad_clip=0.0, temperature=0.01, hnnce_alpha=1.0, hnnce_beta=0.0,
        train_vision=False, schedule="step", loss="pic2word",
    ),
    "pic2word-tiny": dict(
        epochs=5, batch_size=128, lr=1e-4, weight_decay=0.1, warmup_steps=100,
        grad_clip=0.0, temperature=0.07, hnnce_alpha=1.0, hnnce_beta=0.0,
        train_vision=False, schedule="step", loss="pic2word",
    ),
}
SCHEDULES = ("step", "epoch", "constant")
# The re-ranker's learning rate (--rerank-lr) under each recipe: BLIP's COCO retrieval
# fine-tuning rate for the pretrained models (salesforce/BLIP configs/retrieval_coco.yaml
# line 16, init_lr 1e-5); for blip-tiny the best of 1e-4, 5e-4 and 1e-3 on seed 0 of the
# default task (one run each, an ad-hoc check: the reference runs report its seeds).
RERANK_LR = {"covr": 1e-5, "tiny": 1e-3, "tiny-v1": 1e-3, "clip4cir": 1e-5}


# The recipe of a composer that trains: its peer's, and its scaled one for clip-tiny.
COMPOSER_RECIPES = {"combiner": "clip4cir", "pic2word": "pic2word"}
TINY_COMPOSER_RECIPES = {"combiner": "clip4cir-tiny", "pic2word": "pic2word-tiny"}


def default_recipe(backbone: str, composer: str | None = None) -> str:
    """blip-tiny: tiny; a trained composer: its own (scaled for clip-tiny); clip-tiny
    otherwise: its contrastive pre-training; every other backbone: covr."""
    if composer in COMPOSER_RECIPES:
        return (TINY_COMPOSER_RECIPES if backbone == "clip-tiny" else COMPOSER_RECIPES)[composer]
    return {"blip-tiny": "tiny", "clip-tiny": "clip-tiny"}.get(backbone, "covr")
