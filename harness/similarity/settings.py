"""What `--similarity` accepts, checked before any work: method names, or `all` (every
registered method but the transductive ones, which run only when named)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from harness.core.errors import HarnessError
from harness.similarity.bank import NONE, bank_split
from harness.similarity.base import SIMILARITIES

ALL = "all"
TRANSDUCTIVE = "-transductive"


@dataclass(frozen=True)
class SimilaritySettings:
    """What a run's similarity study uses (built from RunConfig.similarity_settings())."""

    methods: tuple[str, ...]
    bank: str  # a split of the suite, or "none"
    bank_max_queries: int | None
    seed: int


def parse_methods(tokens: Sequence[str]) -> tuple[str, ...]:
    """The --similarity tokens as method names (`all` expanded), each checked against the registry."""
    out: list[str] = []
    for token in tokens:
        token = token.strip()
        if token == ALL:
            out += [name for name in SIMILARITIES.names() if not name.endswith(TRANSDUCTIVE)]
        else:
            SIMILARITIES.get(token)  # an unknown name is an error with close matches
            out.append(token)
    return tuple(dict.fromkeys(out))


def needs_bank(methods: Sequence[str]) -> bool:
    return any(SIMILARITIES.get(m).needs_bank for m in methods)


def check(settings: SimilaritySettings, suite, split: str) -> None:
    """Before any embedding: a bank where a method needs one, and a bank that is a split."""
    if not settings.methods:
        return
    wanting = [m for m in settings.methods if SIMILARITIES.get(m).needs_bank]
    if settings.bank == NONE:
        if wanting:
            raise HarnessError(f"--similarity {' '.join(wanting)} needs a query bank: give --similarity-bank SPLIT "
                               f"(a split of the suite other than {split}), or name the -transductive variant")
        return
    if wanting:
        bank_split(suite, settings.bank, split)
