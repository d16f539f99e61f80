"""CLIP backbones (transformers' CLIPModel) with a composer for the composed query.

CLIP has no fusion encoder, so the composed query is a registered composer's rule
over what CLIP gives (backbones/composers/): the reference image's projected
features and the text encoder, which a composer may feed pseudo-word embeddings
(Pic2Word's "*") in place of a placeholder token.

- target / gallery embedding: normalize(visual_projection(ViT(img).pooler_output))
- text-only embedding: normalize(text_projection(text encoder at the end token))
- composed query: normalize(composer.compose(...))

The model is a `ClipWithComposer` module: CLIP and the composer's trainable part
side by side, so that training, saving and hashing see one model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import CLIPModel, PreTrainedTokenizerBase

from backbones.blip import ComposerBase
from backbones.composers import COMPOSERS
from backbones.integrity import write_checksums
from harness.core.errors import HarnessError

COMPOSER_WEIGHTS = "coir_composer.safetensors"
COMPOSER_CONFIG = "coir_composer.json"


def unused_options(options, backbone: str) -> list[str]:
    """The options for original checkpoint files, which CLIP backbones do not read: an
    error rather than a silent no-op."""
    given = {"--tokenizer": options.tokenizer, "--model-config": options.model_config,
             "--checkpoint-format": options.checkpoint_format}
    return [f"{name} applies to original BLIP / BLIP-2 files; {backbone} reads transformers directories and hub ids "
            "(their tokenizer and config inside): leave it out" for name, value in given.items() if value]


class ClipWithComposer(torch.nn.Module):
    def __init__(self, clip: CLIPModel, composer_module: torch.nn.Module | None):
        super().__init__()
        self.clip = clip
        self.composer = composer_module if composer_module is not None else torch.nn.Identity()


class ClipBackbone(ComposerBase):
    """`stage` says what training changes: "composer" (the composer's parameters, CLIP
    frozen, as CLIP4Cir and Pic2Word train) or "contrastive" (CLIP itself, image
    against caption: the tiny CLIP's pre-training)."""

    def __init__(self, name: str, clip: CLIPModel, tokenizer: PreTrainedTokenizerBase, preprocessing,
                 composer, checkpoint_id: str, checkpoint_sha256: str):
        self.name = name
        self.tokenizer = tokenizer
        self.preprocessing = preprocessing
        width = getattr(composer, "width", None)  # a pseudo-word composer's token width
        if width is not None and width != clip.config.text_config.hidden_size:
            raise HarnessError(f"composer {composer.name!r} writes {width}-wide pseudo words; this CLIP's text "
                               f"encoder reads {clip.config.text_config.hidden_size}-wide token embeddings")
        self.composer = composer
        self.model = ClipWithComposer(clip, composer.module)
        self.checkpoint_id = checkpoint_id
        self.weights_sha256 = checkpoint_sha256
        self.image_size = preprocessing.size
        self.embed_dim = clip.config.projection_dim
        self.text_positions = clip.config.text_config.max_position_embeddings
        # CLIP reads 77 tokens in training and evaluation alike (its context length)
        self.eval_max_text_len = self.train_max_text_len = self.max_text_len = self.text_positions
        self.stage = "composer"
        self._pseudo_words: tuple[torch.Tensor, torch.Tensor] | None = None
        clip.text_model.embeddings.token_embedding.register_forward_hook(self._with_pseudo_words)

    @property
    def clip(self) -> CLIPModel:
        return self.model.clip

    @property
    def checkpoint_sha256(self) -> str:
        """The weights' hash with the composer's name and configuration, and a trainable
        composer's own weights: the same CLIP under another composer, or under another
        (say freshly initialised) mapping, makes other queries (results and cache keys)."""
        composer = json.dumps({"composer": self.composer.name, **self.composer.config()}, sort_keys=True)
        if self.composer.module is not None:
            composer += "|" + module_sha256(self.composer.module)
        return hashlib.sha256(f"{self.weights_sha256}|{composer}".encode()).hexdigest()

    @checkpoint_sha256.setter
    def checkpoint_sha256(self, value: str) -> None:
        self.weights_sha256 = value

    def describe_composer(self) -> dict:
        return {"composer": self.composer.name, "prompt": self.composer.prompt}

    # -- images -------------------------------------------------------------------
    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """The projected image features, not normalised (what Pic2Word's mapping reads)."""
        pooled = self.clip.vision_model(pixel_values=pixels).pooler_output
        return self.clip.visual_projection(pooled)

    def image_embedding_from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(tokens.float(), dim=-1)

    # -- text ---------------------------------------------------------------------
    def text_features(self, texts: list[str], pseudo_word_id: int | None = None,
                      pseudo_words: torch.Tensor | None = None) -> torch.Tensor:
        """Projected text features, not normalised. With `pseudo_words` (N, width), the
        token embedding of `pseudo_word_id` in text i is replaced by row i (Pic2Word's
        encode_text_img_vis): the text encoder reads the image as a word."""
        batch = self.tokenize(texts)
        context = contextlib.nullcontext()
        if pseudo_words is not None:
            context = self._pseudo_words_in(batch["input_ids"] == pseudo_word_id, pseudo_words)
        with context:
            pooled = self.clip.text_model(**batch).pooler_output
        return self.clip.text_projection(pooled)

    @contextlib.contextmanager
    def _pseudo_words_in(self, where: torch.Tensor, vectors: torch.Tensor):
        missing = (~where.any(dim=1)).nonzero().flatten().tolist()
        if missing:
            raise HarnessError(f"texts {missing} lost their placeholder token (truncated?): a pseudo word "
                               "needs its place in every text")
        self._pseudo_words = (where, vectors)
        try:
            yield
        finally:
            self._pseudo_words = None

    def _with_pseudo_words(self, module, inputs, output: torch.Tensor) -> torch.Tensor | None:
        if self._pseudo_words is None:
            return None
        where, vectors = self._pseudo_words
        index = torch.arange(output.shape[0], device=output.device)[:, None].expand_as(where)[where]
        output = output.clone()
        output[where] = vectors[index].to(output.dtype)
        return output

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return F.normalize(self.text_features(texts).float(), dim=-1)

    def query_embedding_from_tokens(self, tokens: torch.Tensor, texts: list[str]) -> torch.Tensor:
        if self.stage == "contrastive":  # pre-training: the caption alone meets its image
            return self.encode_text(texts)
        return F.normalize(self.composer.compose(self, tokens, texts).float(), dim=-1)

    def encode_query(self, pixels: torch.Tensor, texts: list[str]) -> torch.Tensor:
        return self.query_embedding_from_tokens(self.image_tokens(pixels), texts)

    # -- training and saving ------------------------------------------------------
    def trainable_parameters(self, train_vision: bool) -> list[torch.nn.Parameter]:
        """The composer's parameters (CLIP frozen), or CLIP's own in contrastive
        pre-training (the vision tower only if `train_vision`)."""
        if self.stage == "contrastive":
            clip = self.clip
            modules = [clip.text_model, clip.text_projection]
            if train_vision:
                modules += [clip.vision_model, clip.visual_projection]
            return [p for m in modules for p in m.parameters()]
        if self.composer.module is None:
            raise HarnessError(f"composer {self.composer.name!r} has nothing to train")
        return list(self.composer.module.parameters())

    def save(self, directory: str | Path) -> None:
        """A transformers directory (CLIP + tokenizer) with the composer beside it (its
        name and configuration, and its weights if it has any)."""
        directory = Path(directory)
        self.clip.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        (directory / "coir_preprocess.json").write_text(json.dumps(self.preprocessing.describe(), indent=2))
        # transformers' CLIPImageProcessor form, which loading reads back (backbones/clip_preprocess.py)
        (directory / "preprocessor_config.json").write_text(json.dumps({
            "image_processor_type": "CLIPImageProcessor", "crop_size": {"height": self.image_size,
                                                                         "width": self.image_size},
            "size": {"shortest_edge": self.preprocessing.resize_to or self.image_size}, "do_center_crop": True,
            "resample": 3, "image_mean": list(self.preprocessing.mean), "image_std": list(self.preprocessing.std),
        }, indent=2))
        if self.stage == "composer":  # a contrastive pre-training leaves the composer as it was: untrained
            (directory / COMPOSER_CONFIG).write_text(json.dumps(
                {"composer": self.composer.name, "config": self.composer.config()}, indent=2))
            if self.composer.module is not None:
                save_file({k: v.contiguous() for k, v in self.composer.module.state_dict().items()},
                          str(directory / COMPOSER_WEIGHTS))
        write_checksums(directory)


def build_composer(name: str, embed_dim: int, directory: str | None = None, text_width: int | None = None):
    """The composer `name`; from `directory` (a saved CLIP run) its configuration and
    trained weights when that run saved the same composer. `text_width`, the text
    encoder's hidden size, reaches the composers that write pseudo words into its
    token embeddings (`needs_text_width`; its saved `config()` holds it too)."""
    cls = COMPOSERS.get(name)
    given = {"width": text_width} if text_width is not None and getattr(cls, "needs_text_width", False) else {}
    saved = Path(directory) / COMPOSER_CONFIG if directory else None
    if saved is None or not saved.is_file():
        return cls(embed_dim, **given)
    record = json.loads(saved.read_text())
    if record["composer"] != name:
        return cls(embed_dim, **given)  # CLIP's weights serve any composer; a trained one starts afresh
    composer = cls(embed_dim, **{**record["config"], **given})
    weights = Path(directory) / COMPOSER_WEIGHTS
    if composer.module is not None and weights.is_file():
        composer.module.load_state_dict(load_file(str(weights)))
        composer.trained = True
    return composer


def module_sha256(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in module.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
