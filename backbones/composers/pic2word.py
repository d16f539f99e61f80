"""`pic2word` (Saito et al., CVPR 2023): the reference image becomes a word of the
prompt the text encoder reads.

A small MLP maps the CLIP image embedding to one token embedding of the text
encoder, a pseudo word; the composed query is CLIP's text feature of a prompt in
which the placeholder "*" stands for that word. Only the MLP trains, on images
alone: "a photo of <pseudo word>" must find its own image among the batch's.

Read from Pic2Word's code, google-research/composed_image_retrieval at commit
8c053297c2fae9cd17ddcded48445a4f47208dbd (paths and lines of that commit):

- Mapping network, IM2TEXT (model/model.py:27-45): `n_layer` blocks, each a Linear
  (CLIP's embedding width, then `middle_dim`) followed by Dropout and ReLU, then a
  Linear `fc_out` to the token width. Defaults middle_dim 512, 2 blocks, dropout
  0.1 (model/model.py:28; src/params.py:99-109 give --middle_dim 512 and --n-layer 2;
  its --droprate is parsed but never handed to IM2TEXT, src/main.py:87-90, so 0.1
  holds). The token width is the text encoder's token-embedding width
  (src/main.py:89), not the projection width: ClipBackbone passes it as `width`.
- Its input: CLIP's encode_image output, the projected image embedding before L2
  normalisation, taken without gradients (src/trainer.py:103-105; the same at
  evaluation, src/eval_utils.py:332-333): what ClipBackbone.image_tokens gives.
- Training text: the tokens of "a photo of" with the pseudo word inserted just
  before the end token (src/trainer.py:94-100, model/model.py:422-437), the same
  sequence as "a photo of *" with the word in the place of "*": TRAINING_PROMPT.
  A query with an empty caption (harness/training/image_pairs.py) reads it.
- Evaluation: the placeholder is the tokenizer's id of "*" (src/eval_utils.py:322)
  and its first occurrence takes the word (model/model.py:480-489). Prompts per
  dataset (PIC2WORD_PROMPTS): CIRR "a photo of * , {caption}" (src/data.py:111 and
  129); FashionIQ the same with the two relative captions joined second first,
  "a photo of * , {c2} and {c1}" (src/data.py:227-228); COCO object composition
  "a photo of * and {objects}", the other objects joined by " and "
  (src/data.py:300); ImageNet domain conversion "a {domain} of *" over cartoon,
  origami, toy and sculpture (src/eval_retrieval.py:257-258).

Here every suite reads PROMPT with the suite's own caption. For FashionIQ that is
the suite's join, "c1 and c2" (harness/suites/fashioniq.py), where Pic2Word puts the
second caption first; `fashioniq-both-orders` scores both orders.
"""

from __future__ import annotations

import torch

from backbones.composers.base import register_composer
from harness.core.errors import HarnessError

PLACEHOLDER = "*"
PROMPT = "a photo of * , {caption}"
TRAINING_PROMPT = "a photo of *"
PIC2WORD_PROMPTS = {
    "cirr": "a photo of * , {caption}",
    "fashioniq": "a photo of * , {c2} and {c1}",
    "coco": "a photo of * and {objects}",
    "imagenet-r": "a {domain} of *",
}


class PseudoWordMapping(torch.nn.Module):
    """IM2TEXT's layers under its own parameter names (layers.<i>.0, fc_out), so that
    its released weights load as they are (backbones/composers/pic2word_file.py)."""

    def __init__(self, embed_dim: int, middle_dim: int, layers: int, dropout: float, width: int):
        super().__init__()
        blocks, fan_in = [], embed_dim
        for _ in range(layers):
            blocks.append(torch.nn.Sequential(torch.nn.Linear(fan_in, middle_dim), torch.nn.Dropout(dropout),
                                              torch.nn.ReLU()))
            fan_in = middle_dim
        self.layers = torch.nn.Sequential(*blocks)
        self.fc_out = torch.nn.Linear(fan_in, width)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.layers(image_features))


@register_composer("pic2word")
class Pic2Word:
    """`width`: the text encoder's token width (build_composer passes the CLIP's; None
    takes `embed_dim`, equal to it in CLIP ViT-B and ViT-L, not in clip-tiny or the
    ResNet CLIPs). `prompt`: the evaluation template, one "*" and "{caption}"."""

    name = "pic2word"
    trains_on = "images"
    needs_text_width = True

    def __init__(self, embed_dim: int, middle_dim: int = 512, layers: int = 2, dropout: float = 0.1,
                 width: int | None = None, prompt: str = PROMPT):
        check_prompt(prompt)
        self.embed_dim = embed_dim
        self.middle_dim, self.layers, self.dropout = middle_dim, layers, dropout
        self.width = embed_dim if width is None else width
        self.prompt = prompt
        self.module = PseudoWordMapping(embed_dim, middle_dim, layers, dropout, self.width)
        self.trained = False

    def config(self) -> dict:
        return {"middle_dim": self.middle_dim, "layers": self.layers, "dropout": self.dropout,
                "width": self.width, "prompt": self.prompt}

    def pseudo_words(self, image_features: torch.Tensor) -> torch.Tensor:
        """(N, embed_dim) un-normalised image features -> (N, width) token embeddings."""
        return self.module(image_features.to(self.module.fc_out.weight.dtype))

    def compose(self, clip, image_features: torch.Tensor, texts: list[str]) -> torch.Tensor:
        return clip.text_features(query_texts(self.prompt, texts), placeholder_id(clip.tokenizer),
                                  self.pseudo_words(image_features))


def check_prompt(prompt: str) -> None:
    if prompt.count(PLACEHOLDER) != 1 or "{caption}" not in prompt:
        raise HarnessError(f"a pic2word prompt holds the placeholder {PLACEHOLDER!r} once and '{{caption}}', "
                           f"got {prompt!r}")


def query_texts(prompt: str, captions: list[str]) -> list[str]:
    """The text each caption's query reads: the prompt around it, or Pic2Word's
    training text for an empty caption. A caption may not hold the placeholder
    itself: it would take the word too (CoVR's caption cleaning removes "*")."""
    texts = []
    for i, caption in enumerate(captions):
        if PLACEHOLDER in caption:
            raise HarnessError(f"caption {i} ({caption!r:.80}) holds the placeholder {PLACEHOLDER!r}, which "
                               "stands for the image in a pic2word query; clean the captions "
                               "(--caption-cleaning covr turns it into a space)")
        texts.append(prompt.replace("{caption}", caption) if caption else TRAINING_PROMPT)
    return texts


def placeholder_id(tokenizer) -> int:
    """The id of "*" in `tokenizer`; an error if it is split into several tokens (no
    one embedding to replace) or unknown (every unknown character would take the word)."""
    ids = tokenizer.encode(PLACEHOLDER, add_special_tokens=False)
    if len(ids) != 1:
        raise HarnessError(f"the tokenizer splits the placeholder {PLACEHOLDER!r} into {len(ids)} tokens "
                           f"({ids}); a pseudo word replaces exactly one token embedding")
    if ids[0] == tokenizer.unk_token_id:
        raise HarnessError(f"the tokenizer does not know the placeholder {PLACEHOLDER!r} (it reads as its "
                           "unknown token)")
    return ids[0]
