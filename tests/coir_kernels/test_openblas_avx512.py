"""The AVX-512 OpenBLAS (coir_kernels/openblas_avx512.py): loaded with its AVX-512
kernels where the CPU has them, with the environment left as it was; its products
are torch's up to the order of fp32 sums; where it cannot run, it says why."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from coir_kernels import gemm, openblas_avx512

FLAGS = gemm.cpu_flags()
needs_it = pytest.mark.skipif(not openblas_avx512.available(FLAGS),
                              reason="no AVX-512 CPU or no scipy-openblas32 here")


@pytest.mark.skipif(bool(openblas_avx512.missing_flags(FLAGS)) or openblas_avx512.version() == "-",
                    reason="no AVX-512 CPU or no scipy-openblas32 here")
def test_the_library_runs_its_avx512_kernels():
    assert openblas_avx512.load(FLAGS).scipy_openblas_get_corename().decode().upper() == "SKYLAKEX"


@needs_it
@pytest.mark.parametrize("rows, columns, dim", [(37, 101, 32), (1, 1, 1), (0, 5, 8), (5, 0, 8), (3, 4, 0)])
def test_products_are_torchs_up_to_the_order_of_sums(rows, columns, dim):
    gen = torch.Generator().manual_seed(rows * 1000 + columns)
    query = torch.randn(dim, rows, generator=gen).T  # a transposed view: copied to rows first
    gallery = torch.randn(columns, dim, generator=gen)
    out = torch.full((rows, columns), float("nan"))
    assert openblas_avx512.scores_into(out, query, gallery, FLAGS) is out
    torch.testing.assert_close(out, query @ gallery.T, atol=1e-4, rtol=1e-5)


@needs_it
def test_a_wrong_output_or_dtype_is_refused():
    a, b = torch.randn(4, 8), torch.randn(6, 8)
    with pytest.raises(ValueError, match=r"cannot write \(4, 8\) x \(6, 8\).T into \(6, 4\)"):
        openblas_avx512.scores_into(torch.empty(6, 4), a, b, FLAGS)
    with pytest.raises(TypeError, match="fp32 tensors only"):
        openblas_avx512.scores_into(torch.empty(4, 6), a.double(), b.double(), FLAGS)


def test_a_cpu_without_avx512_gets_a_reason_and_a_forced_choice_an_error(monkeypatch, tmp_path):
    no_avx512 = frozenset({"sse4_2", "avx2", "avx512f"})
    with pytest.raises(openblas_avx512.Unavailable, match="does not report avx512cd, avx512bw, avx512dq, avx512vl"):
        openblas_avx512.load(no_avx512)
    assert not openblas_avx512.available(no_avx512)
    monkeypatch.setattr(gemm, "cpu_flags", lambda: no_avx512)
    assert gemm.libraries(torch.float32) == ("torch", "numpy")
    monkeypatch.setenv("COIR_BENCH_CACHE", str(tmp_path))
    monkeypatch.setenv("COIR_GEMM", "openblas-avx512")
    gemm.plan.cache_clear()
    try:
        with pytest.raises(ValueError, match="COIR_GEMM=openblas-avx512 cannot run here: the CPU does not report"):
            gemm.plan(8)
    finally:
        gemm.plan.cache_clear()


LOAD = """
import os, sys
from coir_kernels import gemm, openblas_avx512
{before}
try:
    openblas_avx512.load(gemm.cpu_flags())
    print("loaded", os.environ.get("OPENBLAS_CORETYPE"))
except openblas_avx512.Unavailable as err:
    print("unavailable:", err)
"""


def _fresh_process(before: str, env_value: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    if env_value is not None:
        env["OPENBLAS_CORETYPE"] = env_value
    done = subprocess.run([sys.executable, "-c", LOAD.format(before=before)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@needs_it
def test_the_environment_is_left_as_it_was():
    """OPENBLAS_CORETYPE is set only while the library loads: child processes (and
    numpy's OpenBLAS in them) see the user's value, or none."""
    assert _fresh_process("") == "loaded None"
    assert _fresh_process("", env_value="HASWELL") == "loaded HASWELL"


@needs_it
def test_a_library_loaded_before_us_with_other_kernels_is_not_used():
    before = ("os.environ['OPENBLAS_CORETYPE'] = 'HASWELL'; import scipy_openblas32; "
              "del os.environ['OPENBLAS_CORETYPE']")
    assert _fresh_process(before) == (
        "unavailable: scipy_openblas32 was loaded before coir_kernels with its Haswell kernels")
