"""The query bank of the hubness corrections: the composed queries of another split of
the suite (`--similarity-bank`, default train), at most `--similarity-bank-max-queries`
of them (the first by a seeded hash of their pair ids), embedded by the evaluated
model and pooled as the run pools. The bank needs no targets and no gallery: only its
queries' reference images are embedded. Never the evaluated split (the methods named
"-transductive" use that, by name)."""

from __future__ import annotations

import hashlib
from dataclasses import replace

from harness.core.errors import HarnessError
from harness.suites.base import SplitData

NONE = "none"  # no bank: only the methods that need none run
AUTO = "auto"  # the suite's train split, else its first other split


def resolve_bank(name: str, suite, evaluated: str) -> str:
    """`auto` made a split name (train when the suite has one, else the first split that is
    not the evaluated one; none when there is no other split)."""
    if name != AUTO:
        return name
    splits = [s for s in getattr(suite, "splits", ()) if s != evaluated]
    return "train" if "train" in splits else (splits[0] if splits else NONE)


def bank_split(suite, name: str, evaluated: str) -> None:
    """Refuse a bank that is the evaluated split or not a split of the suite, saying what to do."""
    if name == evaluated:
        raise HarnessError(f"--similarity-bank {name} is the evaluated split: a bank must be another split "
                           "(or use a method named -transductive, which uses the evaluated queries by name)")
    splits = getattr(suite, "splits", ())
    if name not in splits:
        raise HarnessError(f"--similarity-bank must be a split of {suite.name if hasattr(suite, 'name') else 'the suite'} "
                           f"other than {evaluated} ({', '.join(s for s in splits if s != evaluated) or 'none'}), "
                           f"or {NONE}; not {name!r}")


def _order_key(seed: int, pair_id) -> str:
    return hashlib.sha256(f"bank:{seed}:{pair_id}".encode()).hexdigest()


def bank_queries(data: SplitData, cap: int | None, seed: int) -> tuple[SplitData, dict]:
    """The bank's split data (its queries, no gallery) and its record for the results."""
    queries = list(data.queries)
    rule = f"every query of {data.suite}/{data.split} ({len(queries)})"
    if cap is not None and len(queries) > cap:
        keep = sorted(sorted(range(len(queries)), key=lambda i: _order_key(seed, queries[i].pair_id))[:cap])
        queries = [queries[i] for i in keep]
        rule = f"the first {cap} of {len(data.queries)} queries of {data.suite}/{data.split} by sha256('bank:{seed}:<pair id>')"
    if not queries:
        raise HarnessError(f"--similarity-bank {data.split}: the split has no queries")
    split = data.split if cap is None or len(data.queries) <= cap else f"{data.split}-bank{cap}-seed{seed}"
    bank = replace(data, queries=queries, gallery=[], groups={}, split=split)
    return bank, {"split": data.split, "queries": len(queries), "rule": rule}
