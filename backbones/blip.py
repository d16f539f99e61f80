"""BLIP retrieval models (transformers' BlipForImageTextRetrieval) as CoVR uses them.

- target / gallery embedding: normalize(vision_proj(ViT(img)[:, 0]))
- composed query f(q, t): the text encoder reads the caption with its first token
  replaced by [ENC] and cross-attends to the reference image's ViT tokens;
  normalize(text_proj(CLS))
- text-only embedding: the text encoder without the image (BLIP's "text" mode);
  normalize(text_proj(CLS))
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoTokenizer, BlipForImageTextRetrieval, PreTrainedTokenizerBase

from backbones.integrity import write_checksums
from backbones.preprocess import ImagePreprocess

ENC_TOKEN = "[ENC]"
EVAL_MAX_TEXT_LEN = 64  # CoVR evaluates with 64 tokens and trains with 35
TRAIN_MAX_TEXT_LEN = 35


def bert_tokenizer_with_dec(source: str) -> PreTrainedTokenizerBase:
    """BERT's tokenizer as BLIP and LAVIS extend it: [DEC] as bos (id 30522); the
    composer adds [ENC] after it."""
    tokenizer = AutoTokenizer.from_pretrained(source)
    if "[DEC]" not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    return tokenizer


class ComposerBase:
    """What BLIP and BLIP-2 composers do the same way: pixels, the vision pass
    as a whole, and tokenisation."""

    model: torch.nn.Module
    preprocessing: ImagePreprocess
    tokenizer: PreTrainedTokenizerBase
    max_text_len: int  # set per phase: eval_max_text_len, or train_max_text_len while training
    eval_max_text_len = EVAL_MAX_TEXT_LEN  # CoVR: 64 tokens at evaluation
    train_max_text_len = TRAIN_MAX_TEXT_LEN  # CoVR: 35 in training
    text_positions: int  # the text encoder's position table: a hard cap on length

    def pooled_for_loss(self, embeddings: torch.Tensor) -> torch.Tensor:
        """What the training loss compares: the embeddings themselves (one vector each)."""
        return embeddings

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self.preprocessing.to_uint8(image)

    def normalize(self, pixels_uint8: torch.Tensor) -> torch.Tensor:
        return self.preprocessing.normalize(pixels_uint8)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image_embedding_from_tokens(self.image_tokens(pixels))

    def save(self, directory: str | Path) -> None:
        """A transformers directory (model + tokenizer) that loads back as a checkpoint."""
        directory = Path(directory)
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        (directory / "coir_preprocess.json").write_text(
            json.dumps(self.preprocessing.describe(), indent=2)
        )
        write_checksums(directory)  # verified wherever it is loaded (backbones/integrity.py)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """The tokenizer's batch (padding to the longest, truncation at the phase's
        length), from each text's ids tokenized once per composer: training reads
        every caption once per epoch."""
        length = min(self.max_text_len, self.text_positions)
        rows = [self._token_ids(text, length) for text in texts]
        longest = max((len(r) for r in rows), default=0)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(rows), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        left = self.tokenizer.padding_side == "left"
        for i, row in enumerate(rows):
            span = slice(longest - len(row), longest) if left else slice(0, len(row))
            ids[i, span] = torch.tensor(row, dtype=torch.long)
            mask[i, span] = 1
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}

    def _token_ids(self, text: str, length: int) -> list[int]:
        known = self.__dict__.setdefault("_known_token_ids", {})
        key = (id(self.tokenizer), text, length)  # a swapped tokenizer tokenizes afresh
        if key not in known:
            known[key] = self.tokenizer(text, truncation=True, max_length=length)["input_ids"]
        return known[key]


class BlipComposer(ComposerBase):
    def __init__(
        self,
        name: str,
        model: BlipForImageTextRetrieval,
        tokenizer: PreTrainedTokenizerBase,
        preprocessing: ImagePreprocess,
        checkpoint_id: str,
        checkpoint_sha256: str,
    ):
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.preprocessing = preprocessing
        self.checkpoint_id = checkpoint_id
        self.checkpoint_sha256 = checkpoint_sha256  # content identity: results and cache keys
        self.image_size = preprocessing.size
        self.embed_dim = model.config.image_text_hidden_size
        self.max_text_len = EVAL_MAX_TEXT_LEN
        self.text_positions = model.config.text_config.max_position_embeddings
        if ENC_TOKEN not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [ENC_TOKEN]})
        self.enc_token_id = tokenizer.convert_tokens_to_ids(ENC_TOKEN)
        vocab_size = model.config.text_config.vocab_size
        if self.enc_token_id >= vocab_size:
            raise ValueError(
                f"{ENC_TOKEN} got id {self.enc_token_id} but the text encoder has only "
                f"{vocab_size} embeddings: the tokenizer does not match the checkpoint"
            )

    # -- images -------------------------------------------------------------------
    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.vision_model(pixel_values=pixels).last_hidden_state

    def image_embedding_from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.vision_proj(tokens[:, 0, :]).float(), dim=-1)

    # -- text ---------------------------------------------------------------------
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenize(texts)
        hidden = self.model.text_encoder(**batch).last_hidden_state
        return F.normalize(self.model.text_proj(hidden[:, 0, :]).float(), dim=-1)

    def query_embedding_from_tokens(self, tokens: torch.Tensor, texts: list[str]) -> torch.Tensor:
        batch = self.tokenize(texts)
        batch["input_ids"][:, 0] = self.enc_token_id
        image_mask = torch.ones(tokens.shape[:-1], dtype=torch.long, device=tokens.device)
        hidden = self.model.text_encoder(
            **batch, encoder_hidden_states=tokens, encoder_attention_mask=image_mask
        ).last_hidden_state
        return F.normalize(self.model.text_proj(hidden[:, 0, :]).float(), dim=-1)

    def encode_query(self, pixels: torch.Tensor, texts: list[str]) -> torch.Tensor:
        return self.query_embedding_from_tokens(self.image_tokens(pixels), texts)

    # -- training and saving ------------------------------------------------------
    def trainable_parameters(self, train_vision: bool) -> list[torch.nn.Parameter]:
        """CoVR (blip_cir.py) trains the text encoder and text_proj; vision_proj stays
        frozen (its targets are precomputed), and the ViT with vision_proj train only
        if asked. The ITM head takes no part in retrieval."""
        modules = [self.model.text_encoder, self.model.text_proj]
        if train_vision:
            modules += [self.model.vision_proj, self.model.vision_model]
        return [p for m in modules for p in m.parameters()]
