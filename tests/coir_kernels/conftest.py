"""The Triton kernel tests run the interpreted kernels on CPU and the compiled ones
(`gpu` tests) on a GPU. Triton's own library functions are fixed as interpreted or
compiled when triton is first imported (tests/conftest.py sets TRITON_INTERPRET=1
before that, so a whole-suite run interprets), and one process cannot hold both
kinds: each test_triton_* test skips when the process has the other kind, and
test_triton_dispatch.py reruns the interpreter tests in a fresh process when triton
was imported before this switch could be made.

    TRITON_INTERPRET=0 python -m pytest -m gpu tests/kernels     # the compiled kernels
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any import of triton

import pytest  # noqa: E402

from coir_kernels import triton_ops  # noqa: E402
from tests.coir_kernels.problems import USABLE  # noqa: E402

SUBPROCESS_TESTS = {"test_interpreter_tests_in_a_fresh_process",
                    "test_kernels_compile_for_hopper_with_one_dot_layout_in_both_rank_passes"}


@pytest.fixture(autouse=True)
def _kernel_mode(request):
    """CPU tests need the interpreted kernels, `gpu` tests the compiled ones."""
    if not request.path.name.startswith("test_triton_") or request.function.__name__ in SUBPROCESS_TESTS:
        return
    if not USABLE:
        pytest.skip("triton was imported before TRITON_INTERPRET was set: see "
                    "test_interpreter_tests_in_a_fresh_process")
    if "gpu" in request.keywords and triton_ops.INTERPRETED:
        pytest.skip("compiled kernels needed: run with TRITON_INTERPRET=0")
    if "gpu" not in request.keywords and not triton_ops.INTERPRETED:
        pytest.skip("interpreted kernels needed: run without TRITON_INTERPRET=0")
