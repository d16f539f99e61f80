"""The similarity study of embeddings made elsewhere (`python -m harness.score
--similarity ...`): the bank is the `composed` tensor of another embeddings file
(`--similarity-bank-embeddings`, e.g. a train split's, written by `harness.run
--save-embeddings`), and learned-linear fits with InfoNCE at temperature 0.07 (there
is no run whose loss to take). Everything else is a run's study (study.py)."""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.core.errors import HarnessError
from harness.similarity.base import SIMILARITIES
from harness.similarity.settings import needs_bank, parse_methods
from harness.similarity.step import study_of
from harness.training.losses import contrastive_loss

EXTERNAL_LOSS = ("hn-nce", 0.07, 1.0, 0.0)  # alpha 1, beta 0: InfoNCE


@dataclass(frozen=True)
class ExternalStudy:
    methods: tuple[str, ...]
    bank_file: Path | None
    seed: int = 0

    def check(self) -> None:
        if needs_bank(self.methods) and self.bank_file is None:
            wanting = [m for m in self.methods if SIMILARITIES.get(m).needs_bank]
            raise HarnessError(f"--similarity {' '.join(wanting)} needs a query bank: give "
                               "--similarity-bank-embeddings FILE (another split's embeddings, its `composed` "
                               "rows), or name the -transductive variant")
        if self.bank_file is not None and not self.bank_file.is_file():
            raise HarnessError(f"--similarity-bank-embeddings {self.bank_file}: no such file")

    def run(self, protocol, rules, data, emb, read_embeddings) -> dict:
        """The study's block; `read_embeddings(path)` reads an embeddings file (harness/score.py)."""
        bank, record = None, {"split": None, "rule": "no method of this study reads a bank"}
        if self.bank_file is not None and needs_bank(self.methods):
            arrays = read_embeddings(self.bank_file)
            if "composed" not in arrays:
                raise HarnessError(f"{self.bank_file}: no `composed` tensor to use as the query bank")
            bank = torch.as_tensor(arrays["composed"]).float()
            if bank.ndim == 3:  # token features: the token mean rule (harness/evaluation/token_pooling.py)
                bank = torch.nn.functional.normalize(bank, dim=-1).mean(dim=1)
            record = {"split": self.bank_file.name, "queries": int(bank.shape[0]),
                      "rule": f"the composed rows of {self.bank_file.name} "
                              f"(sha256 {hashlib.sha256(self.bank_file.read_bytes()).hexdigest()[:12]})"}
        return study_of(self.methods, protocol, rules, data, emb, bank, record, self.seed,
                        contrastive_loss(*EXTERNAL_LOSS))


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--similarity", nargs="+", metavar="METHOD",
                        help="also compare by other methods than cosine, tuned on a seeded half and reported on "
                             "the other, paired with cosine: all, or method names (python -m harness.run --help)")
    parser.add_argument("--similarity-bank-embeddings", type=Path, metavar="FILE",
                        help="the query bank of the hubness corrections: another split's embeddings file "
                             "(its composed rows)")
    parser.add_argument("--seed", type=int, default=0, help="the seed of the tuning / evaluation halves (default 0)")


def study_from_arguments(args: argparse.Namespace) -> ExternalStudy | None:
    if not args.similarity:
        return None
    return ExternalStudy(parse_methods(args.similarity), args.similarity_bank_embeddings, args.seed)
