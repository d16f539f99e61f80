"""Resumable extraction: each batch of a split's embeddings is written to its own
file as soon as it is computed, so a run killed part-way (kill -9, a preempted
node) resumes where it stopped instead of starting over.

    <cache>/embeddings/<entry>.partial/images-b<batch>-<start>.safetensors
                                       text-b<batch>-<start>.safetensors

The folder sits beside the cache entry and shares its name, so it is keyed by the
same identity (weights, preprocessing, data, suite version, precision). Each file
is written to a temporary name and renamed (harness/core/atomic.py): a file present is
complete. A file also records its rows; it is used only when they are the rows
the batch would compute, so a rerun with another batch size simply recomputes.
Batches are the same whatever the number of ranks (batch b of one process's
batching, computed by rank b % world: harness/evaluation/embed.py), so a file is
named by its batch alone and a rerun with another world size resumes from it too.
Batches keep their boundaries on a rerun, so resumed embeddings are bit for bit
those of an uninterrupted run. The folder is removed once the whole entry is written.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from harness.core.atomic import replace_atomically


class PartialEmbeddings:
    def __init__(self, directory: Path, batch_size: int):
        self.directory = Path(directory)
        self.tag = f"b{batch_size}"
        self.resumed = {"images": 0, "text": 0}  # rows read back instead of computed

    def path(self, kind: str, start: int) -> Path:
        return self.directory / f"{kind}-{self.tag}-{start:09d}.safetensors"

    def load(self, kind: str, start: int, rows: list[int]) -> dict[str, torch.Tensor] | None:
        """The batch's tensors if a finished file holds exactly these rows, else None."""
        try:
            tensors = load_file(str(self.path(kind, start)))
        except (SafetensorError, OSError, ValueError):
            return None  # absent (or removed by a concurrent run that finished): compute it
        if tensors.get("rows") is None or tensors["rows"].tolist() != rows:
            return None
        self.resumed[kind] += len(rows)
        return tensors

    def save(self, kind: str, start: int, rows: list[int], tensors: dict[str, torch.Tensor]) -> None:
        out = {"rows": torch.tensor(rows, dtype=torch.long)}
        out.update({name: value.contiguous() for name, value in tensors.items()})
        replace_atomically(self.path(kind, start), lambda tmp: save_file(out, tmp))


def remove(directory: Path) -> None:
    """Drop the partial files of a finished entry (a concurrent writer may re-create some)."""
    shutil.rmtree(directory, ignore_errors=True)
