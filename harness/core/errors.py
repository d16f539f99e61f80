"""User-facing errors: the CLI prints their message, without a traceback, and exits 2."""


class HarnessError(Exception):
    """Something the user can fix: bad input, missing weights or data, a typo."""
