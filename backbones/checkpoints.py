"""Checkpoint resolution: a local transformers directory, or a hub id (from the
local cache, or downloaded when online; HF_HUB_OFFLINE=1 forbids downloads).
The format is never guessed from a file's keys: a directory is a transformers
checkpoint; original BLIP / LAVIS / CoVR files go through named conversions.
A local checkpoint with recorded checksums is verified as it is resolved
(backbones/integrity.py)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from backbones.integrity import file_sha256, verify_checksums
from harness.core.errors import HarnessError


@dataclass(frozen=True)
class ResolvedCheckpoint:
    source: str  # what to pass to from_pretrained
    kind: str  # "directory" | "hub" | "file" (an original checkpoint, converted on load)
    available: bool  # False: a hub id that is not cached and must be downloaded


def resolve(checkpoint: str | None, default_hub_id: str | None, backbone: str) -> ResolvedCheckpoint:
    chosen = checkpoint or default_hub_id
    if chosen is None:
        raise HarnessError(f"{backbone} needs --checkpoint DIR (a transformers checkpoint directory)")
    path = Path(chosen).expanduser()
    if path.exists():
        if path.is_dir() and (path / "config.json").is_file():
            verify_checksums(path)  # a recorded checksum that differs: tampered or damaged
            return ResolvedCheckpoint(str(path.resolve()), "directory", True)
        if path.is_file():
            verify_checksums(path)
            return ResolvedCheckpoint(str(path.resolve()), "file", True)
        raise HarnessError(f"{path} is not a transformers checkpoint directory (no config.json)")
    if chosen.count("/") != 1 or chosen.startswith((".", "/", "~")):
        raise HarnessError(f"checkpoint {chosen!r}: no such directory, and not a hub id (owner/name)")
    return ResolvedCheckpoint(chosen, "hub", _in_hub_cache(chosen))


def _in_hub_cache(repo_id: str) -> bool:
    return _in_hub_cache_file(repo_id, "config.json")


DEFAULT_TOKENIZER = "bert-base-uncased"  # what BLIP, LAVIS and CoVR tokenise with


def preflight_problems(options, default_checkpoint: str, backbone: str, check_file_format) -> list[str]:
    """What keeps a pretrained backbone from loading, found without loading it: for an
    original file its format (check_file_format raises) and the tokenizer; otherwise
    the weights themselves."""
    resolved = resolve(options.checkpoint, default_checkpoint, backbone)
    if resolved.kind == "file":
        check_file_format(resolved.source)
        problem = tokenizer_problem(options.tokenizer or DEFAULT_TOKENIZER)
        return [problem] if problem else []
    message = missing_weights_message(resolved, backbone)
    return [message] if message else []


def missing_weights_message(resolved: ResolvedCheckpoint, backbone: str, original_files: bool = True) -> str | None:
    """Why the weights cannot be had without a download we may not make, or None.
    `original_files`: whether the backbone reads original checkpoint files (BLIP's do,
    CLIP's do not), the third way out the message offers."""
    if resolved.available:
        return None
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    why = "HF_HUB_OFFLINE is set" if offline else "it would have to be downloaded"
    directory = ("--checkpoint DIR with a transformers checkpoint directory (config.json, model.safetensors, "
                 "tokenizer files)")
    ways = (f"{directory}, or --checkpoint FILE with an original checkpoint (BLIP .pth, CoVR .ckpt, "
            "LAVIS BLIP-2 .pth; see README, Checkpoints)") if original_files else directory
    return (
        f"weights for {backbone}: hub id {resolved.source} is not in the local Hugging Face "
        f"cache and {why}. Either run once online (it is downloaded to the cache), or pass {ways}."
    )


def checkpoint_sha256(resolved: ResolvedCheckpoint) -> str:
    """Content hash of a resolved checkpoint: its file, its directory, or its hub snapshot."""
    if resolved.kind == "file":
        return file_sha256(resolved.source)
    if resolved.kind == "directory":
        return directory_sha256(resolved.source)
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(resolved.source, "config.json")
    return directory_sha256(Path(config).parent) if isinstance(config, str) else f"hub:{resolved.source}"


def format_for_file(path: str, given: str | None, by_suffix: dict[str, str], backbone: str) -> str:
    """The named format, else the one the file kind documents (e.g. .pth -> blip)."""
    if given is not None:
        return given
    suffix = Path(path).suffix
    if suffix not in by_suffix:
        kinds = ", ".join(f"{s} -> {f}" for s, f in by_suffix.items())
        raise HarnessError(
            f"{path}: cannot tell the checkpoint format of a '{suffix}' file for {backbone} "
            f"(known file kinds: {kinds}); pass --checkpoint-format"
        )
    return by_suffix[suffix]


def tokenizer_problem(source: str) -> str | None:
    """Why a tokenizer directory or hub id cannot be had offline, or None."""
    path = Path(source).expanduser()
    if path.is_dir():
        return None
    resolved = ResolvedCheckpoint(source, "hub", _in_hub_cache_file(source, "tokenizer_config.json")
                                  or _in_hub_cache_file(source, "vocab.txt"))
    if resolved.available:
        return None
    return (f"tokenizer {source}: no such directory and not in the local Hugging Face cache; "
            "pass --tokenizer DIR (a saved BERT tokenizer, e.g. bert-base-uncased)")


def _in_hub_cache_file(repo_id: str, filename: str) -> bool:
    if repo_id.count("/") > 1:
        return False
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, filename), str)


def directory_sha256(path: str | Path) -> str:
    """One hash over a checkpoint directory's weight and config files, for provenance."""
    path = Path(path)
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if file.is_file() and file.suffix in (".json", ".safetensors", ".bin", ".txt"):
            digest.update(file.name.encode())
            with file.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()
