"""`blip-itm` and `blip2-itm`: the first stage's own model read as a cross-encoder.

- `blip-itm` (BLIP: BlipForImageTextRetrieval): the text encoder reads the caption in
  ITM mode (first token [ENC], as BLIP's models/blip_retrieval.py and CoVR's composer)
  and cross-attends to the reference's ViT tokens followed by the candidate's
  (concatenated along the token axis); the ITM head reads the [CLS] output. The score
  is the head's log-odds, logit(match) - logit(no match), which orders the candidates
  as softmax(...)[:, 1] does. This is the stage II the issue describes after
  Candidate-Reranking-CIR; their own stage II differs (Cuberick-Orion/
  Candidate-Reranking-CIR src/blip_stage2.py lines 101-136: an NLVR-style encoder with
  the reference's stage-I output `z_t` in the text stream, the candidate through two
  cross-attentions, a new two-layer head, logit 0 as the score).
- `blip2-itm` (BLIP-2: Blip2ForImageTextRetrieval): SPRC's re-ranker (chunmeifeng/SPRC
  src/lavis/models/blip2_models/blip2_qformer_cir_rerank.py lines 399-445): the query
  tokens and the caption go through the Q-Former together, the Q-Former
  cross-attending to the reference's and the candidate's ViT tokens concatenated; the
  ITM head reads every query-token output and the logits are averaged over them.
  SPRC scores softmax(mean logits)[:, 1]; the log-odds here order the same.

Both start from a copy of the first stage's weights (so training the re-ranker never
changes stage 1), or load a directory a re-ranker saved (a backbone directory:
`--rerank-checkpoint`). The ViT stays frozen: its tokens are computed once per image.
"""

from __future__ import annotations

import copy

import torch

from backbones import BACKBONES, LoadOptions
from backbones.checkpoints import directory_sha256
from harness.rerank.base import register_reranker


class CrossEncoder:
    """What both re-rankers take from the composer they wrap: images, text lengths, saving."""

    def __init__(self, name: str, composer):
        self.name = name
        self.composer = composer
        self.model = composer.model
        self.image_size = composer.image_size
        self.eval_max_text_len = composer.eval_max_text_len
        self.train_max_text_len = composer.train_max_text_len

    @property
    def max_text_len(self) -> int:
        return self.composer.max_text_len

    @max_text_len.setter
    def max_text_len(self, value: int) -> None:  # the training loop switches it per phase
        self.composer.max_text_len = value

    @property
    def checkpoint_id(self) -> str:
        return self.composer.checkpoint_id

    @property
    def checkpoint_sha256(self) -> str:
        return self.composer.checkpoint_sha256

    def preprocess(self, image):
        return self.composer.preprocess(image)

    def normalize(self, pixels_uint8: torch.Tensor) -> torch.Tensor:
        return self.composer.normalize(pixels_uint8)

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.composer.image_tokens(pixels)

    def save(self, directory) -> None:
        self.composer.save(directory)

    def saved_to(self, directory) -> None:
        """After training wrote `directory`: the weights are those, by path and content hash."""
        self.composer.checkpoint_id = str(directory)
        self.composer.checkpoint_sha256 = directory_sha256(directory)

    def pair_inputs(self, reference_tokens, captions, candidate_tokens):
        """(tokenized captions, the reference's tokens then the candidate's, their mask), one row
        per candidate; a reference or caption given once is shared by every row."""
        rows = candidate_tokens.shape[0]
        batch = self.composer.tokenize(captions)
        if batch["input_ids"].shape[0] == 1:
            batch = {key: value.expand(rows, -1) for key, value in batch.items()}
        if reference_tokens.shape[0] == 1:
            reference_tokens = reference_tokens.expand(rows, -1, -1)
        images = torch.cat([reference_tokens, candidate_tokens.to(reference_tokens.dtype)], dim=1)
        mask = torch.ones(images.shape[:-1], dtype=torch.long, device=images.device)
        return batch, images, mask


class BlipItm(CrossEncoder):
    def scores(self, reference_tokens, captions, candidate_tokens) -> torch.Tensor:
        batch, images, mask = self.pair_inputs(reference_tokens, captions, candidate_tokens)
        input_ids = batch["input_ids"].clone()
        input_ids[:, 0] = self.composer.enc_token_id
        hidden = self.model.text_encoder(input_ids=input_ids, attention_mask=batch["attention_mask"],
                                         encoder_hidden_states=images, encoder_attention_mask=mask).last_hidden_state
        logits = self.model.itm_head(hidden[:, 0, :]).float()
        return logits[:, 1] - logits[:, 0]

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for m in (self.model.text_encoder, self.model.itm_head) for p in m.parameters()]


class Blip2Itm(CrossEncoder):
    def scores(self, reference_tokens, captions, candidate_tokens) -> torch.Tensor:
        batch, images, mask = self.pair_inputs(reference_tokens, captions, candidate_tokens)
        model, n_query = self.model, self.composer.num_query_tokens
        query_tokens = model.query_tokens.expand(images.shape[0], -1, -1)
        query_mask = torch.ones(query_tokens.shape[:-1], dtype=torch.long, device=images.device)
        hidden = model.qformer(
            query_embeds=model.embeddings(input_ids=batch["input_ids"], query_embeds=query_tokens),
            query_length=n_query,
            attention_mask=torch.cat([query_mask, batch["attention_mask"]], dim=1),
            encoder_hidden_states=images,
            encoder_attention_mask=mask,
        ).last_hidden_state
        logits = model.itm_head(hidden[:, :n_query, :]).float().mean(dim=1)
        return logits[:, 1] - logits[:, 0]

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        model = self.model
        params = [model.query_tokens]
        for module in (model.embeddings, model.qformer, model.itm_head):
            params.extend(module.parameters())
        return params


class Entry:
    """How a re-ranker is made for a run: `check` before any loading, then `start` from the
    first stage's weights or `load` a directory a re-ranker saved."""

    backbones: tuple[str, ...]  # the first stages whose model it reads
    encoder: type  # the CrossEncoder

    @classmethod
    def check(cls, name: str, backbone: str) -> list[str]:
        if backbone not in cls.backbones:
            return [f"--rerank {name} reads the cross-attention and ITM head of {' / '.join(cls.backbones)}: "
                    f"use it with one of those backbones, not {backbone}"]
        return []

    @classmethod
    def start(cls, name: str, composer):
        """A copy of the first stage's model (its ITM head included): training it leaves stage 1 as it is."""
        return cls.encoder(name, copy.deepcopy(composer))

    @classmethod
    def load(cls, name: str, backbone: str, checkpoint: str, seed: int, device: torch.device):
        return cls.encoder(name, BACKBONES.get(backbone).load(LoadOptions(checkpoint=checkpoint, seed=seed), device))


@register_reranker("blip-itm")
class BlipItmEntry(Entry):
    backbones = ("blip-base", "blip-large", "blip-tiny")
    encoder = BlipItm


@register_reranker("blip2-itm")
class Blip2ItmEntry(Entry):
    backbones = ("blip2",)
    encoder = Blip2Itm
