"""`clip-base-patch32`, `clip-large-patch14` and `clip-bigg`: published CLIP
checkpoints in transformers' format (CLIPModel), with a composer (--composer,
default sum) for the composed query (backbones/clip.py), from

- a hub id (default: each class's `default_checkpoint`), from the local Hugging Face
  cache or downloaded when online; any CLIP checkpoint loads under any of the three
  names (openai/clip-vit-large-patch14-336 under clip-large-patch14, say): the
  architecture is the checkpoint's config.json, the name is what results report;
- a transformers directory (config.json, weights, tokenizer files), such as one a
  CLIP run saved, with its composer's weights beside it.

The tokenizer is the checkpoint's own (AutoTokenizer), texts are cut at its 77
positions. The preprocessing is the checkpoint's preprocessor_config.json (the
directory's, or the cached hub snapshot's), else OpenAI CLIP's at the vision
tower's image size (backbones/clip_preprocess.py).

Original checkpoint files (OpenAI's ViT-L-14.pt, open_clip's .bin) are not read:
transformers' convert_clip_original_pytorch_to_hf.py converts OpenAI's.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, CLIPModel

from backbones.base import LoadOptions, register_backbone
from backbones.checkpoints import (
    ResolvedCheckpoint,
    checkpoint_sha256,
    missing_weights_message,
    resolve,
)
from backbones.clip import ClipBackbone, build_composer, unused_options
from backbones.clip_preprocess import ClipPreprocess, from_processor_config
from backbones.clip_tiny import DEFAULT_COMPOSER  # sum, every CLIP backbone's
from backbones.integrity import from_pretrained_strict
from harness.core.errors import HarnessError

PROCESSOR_CONFIG = "preprocessor_config.json"


def original_file_message(backbone: str, path: str, default_checkpoint: str) -> str:
    return (f"{backbone}: {path} is a checkpoint file; original CLIP checkpoints (OpenAI's .pt) are not "
            f"supported: convert with transformers' convert_clip_original_pytorch_to_hf.py, or pass the hub id "
            f"(default {default_checkpoint}) / a transformers directory (config.json, weights, tokenizer files)")


def processor_directory(resolved: ResolvedCheckpoint) -> str | None:
    """Where the checkpoint's preprocessor_config.json lies: the directory itself, or
    the cached hub snapshot holding it (None when it is not cached)."""
    if resolved.kind == "directory":
        return resolved.source
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(resolved.source, PROCESSOR_CONFIG)
    return str(Path(cached).parent) if isinstance(cached, str) else None


def clip_preprocessing(resolved: ResolvedCheckpoint, image_size: int) -> ClipPreprocess:
    return from_processor_config(processor_directory(resolved), image_size)


class PretrainedClip:
    name: str
    default_checkpoint: str
    composers = True  # takes --composer

    @classmethod
    def check(cls, options: LoadOptions) -> list[str]:
        """A file is refused; a hub id must be in the cache or downloadable (found
        without loading anything: a run without its weights fails in seconds)."""
        problems = unused_options(options, cls.name)
        resolved = resolve(options.checkpoint, cls.default_checkpoint, cls.name)
        if resolved.kind == "file":
            return [*problems, original_file_message(cls.name, resolved.source, cls.default_checkpoint)]
        message = missing_weights_message(resolved, cls.name, original_files=False)
        return [*problems, message] if message else problems

    @classmethod
    def load(cls, options: LoadOptions, device: torch.device) -> ClipBackbone:
        resolved = resolve(options.checkpoint, cls.default_checkpoint, cls.name)
        if resolved.kind == "file":
            raise HarnessError(original_file_message(cls.name, resolved.source, cls.default_checkpoint))
        clip = from_pretrained_strict(CLIPModel, resolved.source, dtype=torch.float32)
        composer = build_composer(options.composer or DEFAULT_COMPOSER, clip.config.projection_dim,
                                  resolved.source if resolved.kind == "directory" else None)
        backbone = ClipBackbone(cls.name, clip, AutoTokenizer.from_pretrained(resolved.source),
                                clip_preprocessing(resolved, clip.config.vision_config.image_size), composer,
                                resolved.source, checkpoint_sha256(resolved))
        backbone.model.to(device).eval()
        return backbone


@register_backbone("clip-base-patch32")
class ClipBasePatch32(PretrainedClip):
    name = "clip-base-patch32"
    default_checkpoint = "openai/clip-vit-base-patch32"


@register_backbone("clip-large-patch14")
class ClipLargePatch14(PretrainedClip):
    name = "clip-large-patch14"
    default_checkpoint = "openai/clip-vit-large-patch14"


@register_backbone("clip-bigg")
class ClipBigG(PretrainedClip):
    name = "clip-bigg"
    default_checkpoint = "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"
