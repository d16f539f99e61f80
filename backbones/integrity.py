"""Checkpoints that are what they claim: checksums recorded beside the weights, and
strict loading.

- `write_checksums(dir)` records the SHA-256 of every file of a checkpoint
  directory in `dir/checksums.sha256` (the `sha256sum` format, so
  `sha256sum -c checksums.sha256` checks it too); `BlipComposer.save` calls it, so
  every checkpoint the harness writes carries one. For a single checkpoint file the
  record is `<file>.sha256` beside it (write one with `sha256sum f > f.sha256`).
- `verify_checksums(path)` runs wherever a checkpoint is resolved (before any
  loading, preflight included): a changed, missing or unlisted weight file is an
  error naming it. A checkpoint without a record (a hub snapshot, a file you
  downloaded) is loaded as it is.
- `from_pretrained_strict` loads a transformers directory and refuses a
  checkpoint with missing, unexpected or mismatched weights, naming them: a
  transformers load would otherwise fill missing weights with random values and
  only log it. Converted original checkpoints are checked the same way
  (backbones/convert.py `load_converted`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from harness.core.atomic import write_text
from harness.core.errors import HarnessError

CHECKSUMS = "checksums.sha256"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
SHOW = 10

_verified: dict[tuple, str] = {}  # (path, size, mtime) -> SHA-256, hashed once per process


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(directory: str | Path) -> Path:
    directory = Path(directory)
    lines = [
        f"{file_sha256(file)}  {file.name}\n"
        for file in sorted(directory.iterdir())
        if file.is_file() and file.name != CHECKSUMS and not file.name.startswith(".")
    ]
    return write_text(directory / CHECKSUMS, "".join(lines))


def verify_checksums(path: str | Path) -> bool:
    """Check a checkpoint directory (or file) against its recorded checksums; False
    when there is no record. Raises HarnessError naming every file that differs."""
    path = Path(path)
    record = path / CHECKSUMS if path.is_dir() else path.with_name(path.name + ".sha256")
    if not record.is_file():
        return False
    folder = path if path.is_dir() else path.parent
    expected = _read_record(record)
    if not path.is_dir():
        expected = {name: digest for name, digest in expected.items() if name == path.name}
        if not expected:
            raise HarnessError(f"{record} holds no checksum for {path.name}")
    problems = []
    for name, digest in expected.items():
        file = folder / name
        if not file.is_file():
            problems.append(f"{name}: missing")
        elif _digest_cached(file) != digest:
            problems.append(f"{name}: SHA-256 differs from the recorded one")
    if path.is_dir():
        problems += [
            f"{file.name}: weight file not in the record"
            for file in sorted(path.iterdir())
            if file.suffix in WEIGHT_SUFFIXES and file.name not in expected
        ]
    if problems:
        shown = "\n  ".join(problems[:SHOW])
        raise HarnessError(
            f"checkpoint {path} does not match its checksums ({record}); it was changed or "
            f"damaged after it was written:\n  {shown}\n"
            "Restore it (or rewrite it), or remove the record to load it anyway."
        )
    return True


def _read_record(record: Path) -> dict[str, str]:
    expected = {}
    for number, line in enumerate(record.read_text().splitlines(), 1):
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise HarnessError(f"{record}, line {number}: not '<sha256>  <file name>'")
        expected[name.lstrip("*")] = digest.lower()
    return expected


def _digest_cached(file: Path) -> str:
    stat = file.stat()
    key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
    digest = _verified.get(key)
    if digest is None:
        digest = _verified[key] = file_sha256(file)
    return digest


def check_loading_info(source: str, info: dict) -> None:
    """Raise HarnessError naming the weights a from_pretrained load did not match."""
    missing = sorted(info.get("missing_keys") or ())
    unexpected = sorted(info.get("unexpected_keys") or ())
    mismatched = sorted(str(m) for m in info.get("mismatched_keys") or ())
    if not (missing or unexpected or mismatched):
        return
    parts = [f"checkpoint {source} does not fit the model: {len(missing)} missing, "
             f"{len(unexpected)} unexpected, {len(mismatched)} with another shape."]
    for what, names in (("missing", missing), ("unexpected", unexpected), ("other shape", mismatched)):
        if names:
            more = f", ... and {len(names) - SHOW} more" if len(names) > SHOW else ""
            parts.append(f"{what} ({len(names)}): {', '.join(names[:SHOW])}{more}")
    raise HarnessError("\n".join(parts))


def from_pretrained_strict(model_class, source: str, **kwargs):
    """`model_class.from_pretrained(source)`, refusing any weight mismatch by name."""
    try:
        model, info = model_class.from_pretrained(source, output_loading_info=True, **kwargs)
    except RuntimeError as err:  # size mismatches: transformers raises after its report
        raise HarnessError(f"checkpoint {source} does not fit {model_class.__name__}: {err}") from err
    check_loading_info(source, info)
    return model
