"""OpenBLAS's AVX-512 fp32 GEMM, for CPUs that have AVX-512 and that OpenBLAS's own
choice of kernels does not give it to.

OpenBLAS built for many CPUs (DYNAMIC_ARCH: numpy's copy, the scipy-openblas
wheels) picks one set of kernels when the library loads, from the CPU's
vendor/family/model (driver/others/dynamic.c, `get_coretype`); a CPU newer than
its table takes an older set. On AMD EPYC family 26 (Zen 5) numpy 2.4's OpenBLAS
(0.3.31) and scipy-openblas32 0.3.34 both name their kernels "Haswell": AVX2, on a
CPU whose 512-bit units then sit idle. The environment variable
OPENBLAS_CORETYPE overrides that choice, but only for a library not yet loaded,
and numpy's is loaded as soon as torch is imported.

So this module loads a second OpenBLAS, the scipy-openblas32 wheel's (its symbols
carry their own prefix, so it lives beside numpy's), with OPENBLAS_CORETYPE set to
SkylakeX while it loads, then restored. Only CPUs that report every AVX-512 subset
those kernels use get it, and `coir_kernels/gemm.py` offers it as one more
library to its probe, which keeps it only where it measures faster. Its sums are
fp32 sums of the same products in another order, as between any two libraries.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import os
import sys
from pathlib import Path

import torch

# The AVX-512 subsets OpenBLAS's SkylakeX kernels execute.
REQUIRED_FLAGS = ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl")
FORCED_CORE = "SKYLAKEX"
PACKAGE = "scipy_openblas32"
# cblas enums (cblas.h)
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


class Unavailable(RuntimeError):
    """This process cannot run the AVX-512 kernels; the message says why."""


def missing_flags(flags: frozenset[str]) -> list[str]:
    """The AVX-512 subsets the kernels need that a CPU reporting `flags` lacks."""
    return [f for f in REQUIRED_FLAGS if f not in flags]


@functools.cache
def load(flags: frozenset[str]) -> ctypes.CDLL:
    """The library with its AVX-512 kernels, for a CPU reporting `flags`; raises
    `Unavailable` (saying why) where it cannot be had."""
    missing = missing_flags(flags)
    if missing:
        raise Unavailable(f"the CPU does not report {', '.join(missing)}")
    if PACKAGE in sys.modules:
        module = sys.modules[PACKAGE]  # loaded before us: whichever kernels it took
    else:
        before = os.environ.get("OPENBLAS_CORETYPE")
        os.environ["OPENBLAS_CORETYPE"] = FORCED_CORE  # read once, when the library loads
        try:
            import scipy_openblas32 as module  # its import loads the library
        except ImportError:
            raise Unavailable(f"{PACKAGE} is not installed (pip install scipy-openblas32)") from None
        finally:
            if before is None:
                del os.environ["OPENBLAS_CORETYPE"]
            else:
                os.environ["OPENBLAS_CORETYPE"] = before
    lib = ctypes.CDLL(str(Path(module.get_lib_dir()) / f"lib{module.get_library()}.so"))
    lib.scipy_openblas_get_corename.restype = ctypes.c_char_p
    core = lib.scipy_openblas_get_corename().decode()
    if core.upper() != FORCED_CORE:
        raise Unavailable(f"{PACKAGE} was loaded before coir_kernels with its {core} kernels")
    lib.scipy_cblas_sgemm.restype = None
    lib.scipy_cblas_sgemm.argtypes = [ctypes.c_int] * 6 + [
        ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
        ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
    lib.scipy_openblas_set_num_threads.argtypes = [ctypes.c_int]
    return lib


def version() -> str:
    """The installed scipy-openblas32's version ("-" if none), read without loading it."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def available(flags: frozenset[str]) -> bool:
    try:
        load(flags)
    except Unavailable:
        return False
    return True


def scores_into(out: torch.Tensor, query: torch.Tensor, gallery_block: torch.Tensor, flags: frozenset[str]
                ) -> torch.Tensor:
    """out (R, C) = query (R, D) @ gallery_block (C, D).T, fp32 CPU tensors, on as many
    OpenBLAS threads as torch has."""
    lib = load(flags)
    if not (query.dtype == gallery_block.dtype == out.dtype == torch.float32):
        raise TypeError("the AVX-512 OpenBLAS GEMM multiplies fp32 tensors only")
    q, g = query.detach().contiguous(), gallery_block.detach().contiguous()
    if not out.is_contiguous() or out.shape != (q.shape[0], g.shape[0]) or q.shape[1] != g.shape[1]:
        raise ValueError(f"cannot write {tuple(q.shape)} x {tuple(g.shape)}.T into {tuple(out.shape)}")
    rows, columns, dim = q.shape[0], g.shape[0], q.shape[1]
    if rows and columns:
        lib.scipy_openblas_set_num_threads(torch.get_num_threads())
        lib.scipy_cblas_sgemm(_ROW_MAJOR, _NO_TRANS, _TRANS, rows, columns, dim, 1.0, q.data_ptr(), dim,
                              g.data_ptr(), dim, 0.0, out.data_ptr(), columns)
    return out
