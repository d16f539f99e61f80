"""Suites: datasets in the CIRR layout. Importing this package registers them."""

from harness.suites import cirr, shapes  # noqa: E402,F401  (registration)
from harness.suites.base import SUITES, Query, SplitData, Suite, register_suite

__all__ = ["SUITES", "Query", "SplitData", "Suite", "register_suite"]
