"""`blip2`: BLIP-2 (transformers' Blip2ForImageTextRetrieval: EVA ViT-g + Q-Former with
32 query tokens) used for composed retrieval as CoVR-2 uses it.

What CoVR-2 computes (read in lucas-ventura/CoVR: src/test/blip2/cirr.py and
src/test/blip2/cirr_val.py for evaluation, src/model/blip2/blip2_cir.py for training,
tools/embs/save_blip2_embs_imgs.py for the gallery; LAVIS blip2_qformer.py
`extract_features` for the "image" / "text" / "multimodal" modes it builds on):

- gallery / target embedding, multi-vector (N, 32, D): the query tokens go through the
  Q-Former alone, cross-attending to ln_vision(ViT(img)); every output token goes through
  vision_proj and is L2-normalised (LAVIS `extract_features(mode="image").image_embeds_proj`,
  written to disk by save_blip2_embs_imgs.py with model_type "coco", 364 px).
- composed query f(q, t), multi-vector (N, 32, D): the query tokens and the caption's tokens
  ([CLS] caption [SEP], BERT tokenizer, no [ENC] swap, padding "longest", max 64 tokens) go
  through the Q-Former together (query tokens concatenated before the text embeddings,
  attention mask ones for the queries + the text mask), the query part cross-attending to
  the reference image's ln_vision(ViT) features. CoVR-2 keeps the outputs at the QUERY
  positions, `last_hidden_state[:, :32]`, and applies text_proj (not vision_proj) to each,
  then L2-normalises per token (LAVIS' "multimodal" mode returns the same query-position
  outputs, unprojected). It does not use the text [CLS] output. This is `composed="query_tokens"`
  (the default). `composed="text_cls"` gives the one-vector variant normalize(text_proj(
  last_hidden_state[:, 32])) (the text [CLS] after the query tokens); it is not what CoVR-2 does.
- similarity: evaluation scores a query against a target by the max over all token pairs,
  einsum("iqe,jke->ijqk") then max, max (CoVR-2's comment: better than the mean it also
  lists). Training (blip2_cir.py) instead means the normalised tokens of both sides (no
  re-normalisation) before HN-NCE. `blip2_similarity` gives both poolings.
- text-only embedding (N, D): the Q-Former text path alone, normalize(text_proj(CLS))
  (LAVIS "text" mode; CoVR-2's blip2_cir_text.py).

Checkpoints: the transformers port of LAVIS' COCO-finetuned BLIP-2 (`blip2_finetune_coco.pth`,
what CoVR-2 starts from) is Salesforce/blip2-itm-vit-g-coco, 364 px; Salesforce/blip2-itm-vit-g
is the 224 px pretrained stage-1 model. The image size is read from the checkpoint's config.
Original LAVIS files go through backbones/convert_blip2.py.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from transformers import (
    AutoTokenizer,
    Blip2Config,
    Blip2ForImageTextRetrieval,
    PreTrainedTokenizerBase,
)

from backbones.base import LoadOptions, register_backbone
from backbones.blip import ComposerBase
from backbones.blip2_files import FILE_KINDS, load_blip2_model, load_original_file
from backbones.blip_tiny import tiny_tokenizer
from backbones.checkpoints import (
    checkpoint_sha256,
    format_for_file,
    preflight_problems,
    resolve,
)
from backbones.preprocess import ImagePreprocess
from harness.core.errors import HarnessError

EVAL_MAX_TEXT_LEN = 64  # CoVR-2 evaluates with max_length 64 (src/test/blip2/cirr.py)
TRAIN_MAX_TEXT_LEN = 32  # and trains with max_txt_len 32 (src/model/blip2/blip2_cir.py)
Composed = Literal["query_tokens", "text_cls"]


class Blip2Composer(ComposerBase):
    multi_vector = True  # gallery embeddings are (N, num_query_tokens, D)
    # CoVR-2 trains against target features computed once with the model it starts from
    # (its embedding files), although the query tokens that produce them are trained.
    fixed_training_targets = True
    eval_max_text_len = EVAL_MAX_TEXT_LEN
    train_max_text_len = TRAIN_MAX_TEXT_LEN

    def pooled_for_loss(self, embeddings: torch.Tensor) -> torch.Tensor:
        """CoVR-2's training (blip2_cir.py) compares token means: the per-token normalised
        (N, T, D) query and target tokens averaged over T, not re-normalised."""
        return embeddings.mean(dim=1) if embeddings.dim() == 3 else embeddings

    def __init__(
        self,
        name: str,
        model: Blip2ForImageTextRetrieval,
        tokenizer: PreTrainedTokenizerBase,
        preprocessing: ImagePreprocess,
        checkpoint_id: str,
        checkpoint_sha256: str,
        composed: Composed = "query_tokens",
    ):
        if composed not in ("query_tokens", "text_cls"):
            raise ValueError(f"composed must be 'query_tokens' or 'text_cls', not {composed!r}")
        qformer_config = model.config.qformer_config
        if not qformer_config.use_qformer_text_input:
            raise ValueError(
                "this BLIP-2 model was built without the Q-Former text path "
                "(qformer_config.use_qformer_text_input=False): text and composed queries need it"
            )
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.preprocessing = preprocessing
        self.checkpoint_id = checkpoint_id
        self.checkpoint_sha256 = checkpoint_sha256  # content identity: results and cache keys
        self.composed = composed
        self.query_multi_vector = composed == "query_tokens"  # encode_query: (N, T, D) or (N, D)
        self.image_size = preprocessing.size
        self.embed_dim = model.config.image_text_hidden_size
        self.num_query_tokens = model.config.num_query_tokens
        self.max_text_len = EVAL_MAX_TEXT_LEN
        self.text_positions = qformer_config.max_position_embeddings
        if len(tokenizer) > qformer_config.vocab_size:
            raise ValueError(
                f"the tokenizer has {len(tokenizer)} tokens but the Q-Former only "
                f"{qformer_config.vocab_size} embeddings: the tokenizer does not match the checkpoint"
            )

    # -- images -------------------------------------------------------------------
    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """ViT output after its final layer norm (LAVIS' ln_vision): what the Q-Former reads."""
        return self.model.vision_model(pixel_values=pixels).last_hidden_state

    def _query_tokens(self, batch_size: int) -> torch.Tensor:
        return self.model.query_tokens.expand(batch_size, -1, -1)

    def image_embedding_from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, T, D): the query tokens alone through the Q-Former, vision_proj, per-token L2."""
        image_mask = torch.ones(tokens.shape[:-1], dtype=torch.long, device=tokens.device)
        hidden = self.model.qformer(
            query_embeds=self._query_tokens(tokens.shape[0]),
            encoder_hidden_states=tokens,
            encoder_attention_mask=image_mask,
        ).last_hidden_state
        projection = self.model.vision_projection
        return F.normalize(projection(hidden.to(projection.weight.dtype)).float(), dim=-1)

    # -- text ---------------------------------------------------------------------
    def _project_text(self, hidden: torch.Tensor) -> torch.Tensor:
        projection = self.model.text_projection
        return F.normalize(projection(hidden.to(projection.weight.dtype)).float(), dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """(N, D): the Q-Former text path alone (no query tokens, no image); text_proj(CLS)."""
        batch = self.tokenize(texts)
        hidden = self.model.qformer(
            query_embeds=self.model.embeddings(input_ids=batch["input_ids"]),
            query_length=0,
            attention_mask=batch["attention_mask"],
        ).last_hidden_state
        return self._project_text(hidden[:, 0, :])

    def query_embedding_from_tokens(self, tokens: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """CoVR-2's composed query: query tokens + caption through the Q-Former, the query
        part cross-attending to the reference image. (N, T, D) from the query positions
        (composed="query_tokens", CoVR-2), or (N, D) from the text [CLS] ("text_cls")."""
        batch = self.tokenize(texts)
        n_query = self.num_query_tokens
        query_tokens = self._query_tokens(tokens.shape[0])
        query_mask = torch.ones(query_tokens.shape[:-1], dtype=torch.long, device=tokens.device)
        image_mask = torch.ones(tokens.shape[:-1], dtype=torch.long, device=tokens.device)
        hidden = self.model.qformer(
            query_embeds=self.model.embeddings(input_ids=batch["input_ids"], query_embeds=query_tokens),
            query_length=n_query,
            attention_mask=torch.cat([query_mask, batch["attention_mask"]], dim=1),
            encoder_hidden_states=tokens,
            encoder_attention_mask=image_mask,
        ).last_hidden_state
        if self.composed == "query_tokens":
            return self._project_text(hidden[:, :n_query, :])
        return self._project_text(hidden[:, n_query, :])

    def encode_query(self, pixels: torch.Tensor, texts: list[str]) -> torch.Tensor:
        return self.query_embedding_from_tokens(self.image_tokens(pixels), texts)

    # -- training and saving ------------------------------------------------------
    def trainable_parameters(self, train_vision: bool) -> list[torch.nn.Parameter]:
        """As CoVR-2's blip2_cir.py: the Q-Former (embeddings and their layer norm included),
        the query tokens and text_proj; vision_proj (the targets are precomputed with it)
        and ln_vision stay frozen; the ViT trains only if asked. The ITM head takes no part."""
        params = [self.model.query_tokens]
        for module in (self.model.embeddings, self.model.qformer, self.model.text_projection):
            params.extend(module.parameters())
        if train_vision:
            vision = self.model.vision_model
            frozen = {id(p) for p in vision.post_layernorm.parameters()}
            params.extend(p for p in vision.parameters() if id(p) not in frozen)
        return params


def _as_tokens(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 2:
        return x[:, None, :]
    if x.dim() == 3:
        return x
    raise ValueError(f"expected (N, D) or (N, T, D) embeddings, got shape {tuple(x.shape)}")


@torch.no_grad()
def blip2_similarity(
    query: torch.Tensor,
    gallery: torch.Tensor,
    pool: Literal["max", "mean"] = "max",
    *,
    renormalize: bool = True,
    max_block_bytes: int = 256 << 20,
) -> torch.Tensor:
    """(Q, G) float32 scores between query and gallery embeddings, each (N, D) or (N, T, D).

    pool="max" (CoVR-2's evaluation): the max over all token pairs, max_ij <q_i, g_j>;
    a one-vector side counts as one token, so (Q, D) x (G, T, D) is max_j <q, g_j>.
    pool="mean": mean-pool the tokens of each multi-vector side first, then the dot product;
    renormalize=True L2-normalises the means (cosine), False keeps them as CoVR-2's training
    loss does. The token-pair scores are computed in blocks of at most max_block_bytes.
    """
    q = _as_tokens(query).float()
    g = _as_tokens(gallery).float()
    if q.shape[-1] != g.shape[-1]:
        raise ValueError(f"dimension mismatch: query {tuple(q.shape)}, gallery {tuple(g.shape)}")
    if pool == "mean":
        q_mean, g_mean = q.mean(dim=1), g.mean(dim=1)
        if renormalize:
            q_mean, g_mean = F.normalize(q_mean, dim=-1), F.normalize(g_mean, dim=-1)
        return q_mean @ g_mean.T
    if pool != "max":
        raise ValueError(f"pool must be 'max' or 'mean', not {pool!r}")
    n_q, t_q, dim = q.shape
    n_g, t_g, _ = g.shape
    g_flat = g.reshape(n_g * t_g, dim)
    per_query_row = t_q * t_g * 4  # bytes of one query against one gallery item
    gallery_step = max(1, min(n_g, max_block_bytes // per_query_row))
    query_step = max(1, max_block_bytes // (per_query_row * gallery_step))
    out = torch.empty(n_q, n_g, dtype=torch.float32, device=q.device)
    for gs in range(0, n_g, gallery_step):
        ge = min(n_g, gs + gallery_step)
        g_block = g_flat[gs * t_g : ge * t_g]
        for qs in range(0, n_q, query_step):
            qe = min(n_q, qs + query_step)
            scores = q[qs:qe].reshape(-1, dim) @ g_block.T  # (q*t_q, g*t_g)
            scores = scores.view(qe - qs, t_q, ge - gs, t_g)
            out[qs:qe, gs:ge] = scores.amax(dim=3).amax(dim=1)
    return out


# -- a tiny random BLIP-2 for tests and the CPU pipeline ----------------------------
TINY_IMAGE_SIZE = 32


def tiny_blip2_config(vocab_size: int, num_query_tokens: int = 8) -> Blip2Config:
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=TINY_IMAGE_SIZE, patch_size=16,
        initializer_range=0.02,  # the default (1e-10) gives every image the same features
    )
    qformer = dict(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, cross_attention_frequency=1,
        use_qformer_text_input=True, pad_token_id=0,
    )
    return Blip2Config(
        vision_config=vision, qformer_config=qformer,
        num_query_tokens=num_query_tokens, image_text_hidden_size=16,
    )


def build_tiny_blip2(seed: int = 0, num_query_tokens: int = 8) -> Blip2Composer:
    """A seeded random BLIP-2 at toy size (32 px, hidden 32, 2+2 layers) with blip-tiny's
    offline tokenizer. The query tokens get LAVIS' init, normal(0, 0.02): transformers
    zero-initialises them, which makes every query token identical."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    config = tiny_blip2_config(len(tokenizer), num_query_tokens)
    model = Blip2ForImageTextRetrieval(config)
    with torch.no_grad():
        model.query_tokens.normal_(0.0, config.qformer_config.initializer_range)
    return Blip2Composer(
        "blip2", model, tokenizer, ImagePreprocess(TINY_IMAGE_SIZE), "random-init", f"random-init:seed={seed}"
    )


@register_backbone("blip2")
class Blip2Backbone:
    """A transformers directory or hub id (default: Salesforce/blip2-itm-vit-g-coco, the
    port of LAVIS' blip2_finetune_coco.pth, CoVR-2's starting point, 364 px), a LAVIS
    .pth file (format "lavis") or CoVR-2's Lightning .ckpt (format "covr2"), converted on
    load (backbones/blip2_files.py)."""

    name = "blip2"
    default_checkpoint = "Salesforce/blip2-itm-vit-g-coco"

    @classmethod
    def check(cls, options: LoadOptions) -> list[str]:
        return preflight_problems(
            options, cls.default_checkpoint, cls.name, lambda path: cls._file_format(path, options)
        )

    @classmethod
    def load(cls, options: LoadOptions, device: torch.device) -> Blip2Composer:
        resolved = resolve(options.checkpoint, cls.default_checkpoint, cls.name)
        if resolved.kind == "file":
            model, tokenizer = load_original_file(resolved.source, cls._file_format(resolved.source, options), options)
        else:
            model = load_blip2_model(resolved.source)
            tokenizer = AutoTokenizer.from_pretrained(resolved.source)
        size = model.config.vision_config.image_size
        preprocessing = ImagePreprocess(size if isinstance(size, int) else int(size[0]))
        composer = Blip2Composer(
            cls.name, model, tokenizer, preprocessing, resolved.source, checkpoint_sha256(resolved)
        )
        composer.model.to(device).eval()
        return composer

    @classmethod
    def _file_format(cls, path: str, options: LoadOptions) -> str:
        fmt = format_for_file(path, options.checkpoint_format, FILE_KINDS, cls.name)
        if fmt not in FILE_KINDS.values():
            raise HarnessError(f"{cls.name} converts LAVIS BLIP-2 (.pth, format 'lavis') and CoVR-2 "
                               f"(.ckpt, format 'covr2') checkpoints, not {fmt!r}")
        return fmt
