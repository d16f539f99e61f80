"""Suites: CIRR and its generated stand-in `shapes`, FashionIQ, CIRCO, WebVid-CoVR, EgoCVR and
GeneCIS (real or generated). Importing this package registers them."""

from harness.suites import circo, cirr, egocvr, fashioniq, genecis, shapes, webvid_covr  # noqa: E402,F401  (registration)
from harness.suites.base import SUITES, Query, SplitData, Suite, register_suite

__all__ = ["SUITES", "Query", "SplitData", "Suite", "register_suite"]
