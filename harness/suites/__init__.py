"""Suites: CIRR and its generated stand-in `shapes`, FashionIQ, CIRCO, WebVid-CoVR,
Dense-WebVid-CoVR, EgoCVR and GeneCIS (real or generated). Importing this package registers them."""

from harness.suites import (  # noqa: E402,F401  (registration)
    circo,
    cirr,
    dense_webvid_covr,
    egocvr,
    fashioniq,
    genecis,
    shapes,
    webvid_covr,
)
from harness.suites.base import SUITES, Query, SplitData, Suite, register_suite

__all__ = ["SUITES", "Query", "SplitData", "Suite", "register_suite"]
