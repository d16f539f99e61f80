"""Mixing adapters, one per scoring protocol (the contract: base.py): the query
blocks each protocol ranks and how it turns rank counts into metrics, so that the
sweep (harness/mixing/sweep.py) gives the protocol's own figures for every triple."""

from harness.mixing.adapters import circo, cirr, egocvr, fashioniq, genecis, webvid  # noqa: F401  (registration)
from harness.mixing.adapters.base import MIXERS, Mixer

__all__ = ["MIXERS", "Mixer"]
