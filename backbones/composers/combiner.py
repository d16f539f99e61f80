"""CLIP4Cir's Combiner (Baldrati et al., ABaldrati/CLIP4Cir at dfed9f7): a small
network trained on the triplets, CLIP frozen, that fuses the reference image's and
the caption's CLIP features into the query.

With q, t the image and text features (D) and p, h the projection and hidden sizes
(src/combiner.py:11-31; combine_features, :50-65):

    t' = drop(relu(W_t t)),  q' = drop(relu(W_q q))        D -> p each, dropout 0.5
    j  = [t' ; q']                                          2p, text first
    lam = sigmoid(W_2 drop(relu(W_1 j)))                    2p -> h -> 1, dropout 0.5
    out = W_o drop(relu(W_c j)) + lam * t + (1 - lam) * q   2p -> h -> D, dropout 0.5
    query = normalize(out)

The residual mixes the raw inputs, weighted by the learned scalar lam per query.
Dropout (four of them, p = 0.5) acts only in train mode: CLIP4Cir calls
combiner.train() for its epochs and combiner.eval() to validate
(src/combiner_train.py:321, :374); our loop puts the backbone's model, which holds this
module as `model.composer`, in train mode for fine-tuning and back in eval mode after.

- Inputs: CLIP's projected features, not normalised: combiner_train.py:334-344 feeds
  `encode_image` / `encode_text` as they come (cast to fp32), and so does validation
  (src/validate.py:224-232). Here: ClipBackbone.image_tokens and text_features.
- Sizes: `--projection-dim 640*4`, `--hidden-dim 640*8` (combiner_train.py:428-429;
  README's command: 2560 / 5120) for RN50x4, whose features have 640 dimensions; we keep
  those ratios, 4x and 8x the feature size, unless given.
- Training: logits 100 * query @ normalize(target).T (combiner.py:31 `logit_scale = 100`,
  a constant, and :44-48), cross-entropy against the diagonal, one direction
  (combiner_train.py:347-350): the `clip4cir` loss (harness/training/losses.py), recipe
  `clip4cir` (harness/training/recipes.py).

The parameters carry CLIP4Cir's names (text_projection_layer, image_projection_layer,
combiner_layer, output_layer, dynamic_scalar.0 / .3), so the "Combiner" state dict of
its .pt files maps key for key (its weights pair with its RN50x4 CLIP, which
transformers' CLIPModel does not load).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from backbones.composers.base import register_composer

LOGIT_SCALE = 100.0  # combiner.py:31; the recipe's temperature is its inverse
DROPOUT = 0.5  # combiner.py:21-22, :27, :28
PROJECTION_RATIO, HIDDEN_RATIO = 4, 8  # 2560 / 640 and 5120 / 640 (combiner_train.py:428-429)


class CombinerNet(nn.Module):
    """(image features, text features) -> normalised query, all (N, feature_dim)."""

    def __init__(self, feature_dim: int, projection_dim: int, hidden_dim: int):
        super().__init__()
        self.text_projection_layer = nn.Linear(feature_dim, projection_dim)
        self.image_projection_layer = nn.Linear(feature_dim, projection_dim)
        self.combiner_layer = nn.Linear(2 * projection_dim, hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, feature_dim)
        self.dynamic_scalar = nn.Sequential(
            nn.Linear(2 * projection_dim, hidden_dim), nn.ReLU(), nn.Dropout(DROPOUT),
            nn.Linear(hidden_dim, 1), nn.Sigmoid(),
        )
        self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(DROPOUT) for _ in range(3))

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        text_part = self.dropout1(F.relu(self.text_projection_layer(text)))
        image_part = self.dropout2(F.relu(self.image_projection_layer(image)))
        joint = torch.cat([text_part, image_part], dim=-1)
        lam = self.dynamic_scalar(joint)
        fused = self.output_layer(self.dropout3(F.relu(self.combiner_layer(joint))))
        return F.normalize(fused + lam * text + (1 - lam) * image, dim=-1)


@register_composer("combiner")
class Combiner:
    """CLIP4Cir's Combiner over the reference's and the caption's CLIP features."""

    name = "combiner"
    prompt = None  # the caption as given
    trains_on = "triplets"
    trained = False  # set by build_composer when weights are loaded

    def __init__(self, embed_dim: int, projection_dim: int | None = None, hidden_dim: int | None = None):
        self.embed_dim = embed_dim
        self.projection_dim = projection_dim or PROJECTION_RATIO * embed_dim
        self.hidden_dim = hidden_dim or HIDDEN_RATIO * embed_dim
        self.module = CombinerNet(embed_dim, self.projection_dim, self.hidden_dim)

    def config(self) -> dict:
        return {"projection_dim": self.projection_dim, "hidden_dim": self.hidden_dim}

    def compose(self, clip, image_features: torch.Tensor, texts: list[str]) -> torch.Tensor:
        # The module's own dtype: fp32 under autocast, fp16/bf16 where an engine cast it.
        dtype = self.module.output_layer.weight.dtype
        return self.module(image_features.to(dtype), clip.text_features(texts).to(dtype))
