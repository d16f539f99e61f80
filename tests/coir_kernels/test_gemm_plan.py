"""The GEMM plan (coir_kernels/gemm.py): measured per CPU as the libraries see it
(family/model/stepping and ISA, not the model name), the fastest probed tile kept
and reused, forced choices obeyed, small problems never probed; whatever the plan,
the counts are the same."""

from __future__ import annotations

import json

import pytest
import torch

from coir_kernels import counting, gemm, reference, two_stage
from tests.coir_kernels.problems import assert_counts_equal, make_problem

ZEN = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: {family}
model\t\t: {model}
model name\t: AMD EPYC
stepping\t: 1
flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni

processor\t: 1
"""


@pytest.fixture(autouse=True)
def fresh_plans(monkeypatch, tmp_path):
    monkeypatch.setenv("COIR_BENCH_CACHE", str(tmp_path))
    monkeypatch.delenv("COIR_GEMM", raising=False)
    monkeypatch.delenv("COIR_GEMM_TILE", raising=False)
    gemm.plan.cache_clear()
    yield
    gemm.plan.cache_clear()


def test_the_key_tells_zen4_from_zen5_under_one_model_name(monkeypatch, tmp_path):
    keys = []
    for family, model in ((25, 17), (26, 2)):
        info = tmp_path / f"cpuinfo-{family}"
        info.write_text(ZEN.format(family=family, model=model))
        monkeypatch.setattr(gemm, "CPUINFO", info)
        keys.append(gemm.machine_key())
    assert keys[0] != keys[1]
    assert keys[0].startswith("AuthenticAMD/25/17/1|avx2+avx512f+avx512_bf16+avx512_vnni|")
    assert keys[1].startswith("AuthenticAMD/26/2/1|")


def test_the_fastest_probed_tile_is_kept_and_reused(monkeypatch, tmp_path):
    rates = {"torch 1024x4096": 50.0, "numpy 1024x4096": 60.0, "torch 4096x16384": 70.0,
             "numpy 4096x16384": 140.0}
    calls = []
    monkeypatch.setattr(gemm, "libraries", lambda dtype: ("torch", "numpy"))
    monkeypatch.setattr(gemm, "measure", lambda dim, dtype: calls.append((dim, dtype)) or dict(rates))
    assert gemm.plan(256) == gemm.Plan("numpy", 4096, 16384, 140.0)
    assert calls == [(256, torch.float32)]
    kept = json.loads((tmp_path / "gemm_choice.json").read_text())
    assert list(kept) == [f"{gemm.machine_key()}|float32|D 256"]
    gemm.plan.cache_clear()
    monkeypatch.setattr(gemm, "measure", lambda dim, dtype: pytest.fail("measured again"))
    assert gemm.plan(256).library == "numpy"  # read back from the file
    monkeypatch.setenv("COIR_GEMM", "torch")
    gemm.plan.cache_clear()
    assert gemm.plan(256) == gemm.Plan("torch", 4096, 16384, 70.0)


def test_a_kept_plan_without_a_library_this_process_adds_is_probed_again(monkeypatch, tmp_path):
    """A plan kept before scipy-openblas32 was installed has no AVX-512 OpenBLAS rates."""
    monkeypatch.setattr(gemm, "libraries", lambda dtype: ("torch", "numpy"))
    monkeypatch.setattr(gemm, "measure", lambda dim, dtype: {"torch 8x8": 1.0, "numpy 8x8": 2.0})
    assert gemm.plan(256).library == "numpy"
    gemm.plan.cache_clear()
    monkeypatch.setattr(gemm, "libraries", lambda dtype: ("torch", "numpy", "openblas-avx512"))
    monkeypatch.setattr(gemm, "measure", lambda dim, dtype: {"torch 8x8": 1.0, "numpy 8x8": 2.0,
                                                            "openblas-avx512 8x8": 4.0})
    assert gemm.plan(256) == gemm.Plan("openblas-avx512", 8, 8, 4.0)
    kept = json.loads((tmp_path / "gemm_choice.json").read_text())
    assert set(kept[f"{gemm.machine_key()}|float32|D 256"]["gflops"]) == {"torch 8x8", "numpy 8x8",
                                                                          "openblas-avx512 8x8"}


def test_a_forced_library_and_tile_are_not_probed(monkeypatch):
    monkeypatch.setattr(gemm, "measure", lambda dim, dtype: pytest.fail("probed"))
    monkeypatch.setenv("COIR_GEMM", "numpy")
    monkeypatch.setenv("COIR_GEMM_TILE", "48x80")
    assert gemm.plan(32) == gemm.Plan("numpy", 48, 80, 0.0)
    assert gemm.plan(32, torch.bfloat16).library == "torch"  # numpy has no bf16 GEMM
    assert gemm.plan_for(10, 10, 32) == gemm.Plan("numpy", 48, 80, 0.0)


def test_small_problems_are_not_probed(monkeypatch):
    monkeypatch.setattr(gemm, "measure", lambda dim, dtype: pytest.fail("probed"))
    assert gemm.plan_for(4096, 4096, 256) == gemm.Plan("torch", *gemm.TILES[0], 0.0)


def test_a_wrong_library_is_refused(monkeypatch):
    monkeypatch.setenv("COIR_GEMM", "blas")
    with pytest.raises(ValueError, match="COIR_GEMM must be one of torch, numpy, openblas-avx512, got 'blas'"):
        gemm.plan(8)


@pytest.mark.parametrize("value", ["2048", "ax8", "0x64"])
def test_a_malformed_tile_is_refused(monkeypatch, value):
    monkeypatch.setenv("COIR_GEMM_TILE", value)
    with pytest.raises(ValueError, match="COIR_GEMM_TILE"):
        gemm.plan(8)


@pytest.mark.parametrize("library", gemm.CHOICES)
def test_counts_are_the_same_under_any_planned_tile(monkeypatch, library):
    """The planned tile and library drive the loops: shapes that split the problem
    unevenly give the counts of one whole tile."""
    if library not in gemm.libraries(torch.float32):
        pytest.skip(f"{library} cannot run on this CPU")
    q, g, pos, exclude = make_problem(150, 700, 32, kind="integer", seed=3)
    whole = reference.target_rank_counts(q, g, pos, exclude)
    monkeypatch.setenv("COIR_GEMM", library)
    monkeypatch.setenv("COIR_GEMM_TILE", "37x101")
    gemm.plan.cache_clear()
    seen = []
    real = gemm.scores
    monkeypatch.setattr(gemm, "scores",
                        lambda x, y, *a: seen.append((x.shape[0], y.shape[0], *a[1:])) or real(x, y, *a))
    assert_counts_equal(reference.target_rank_counts(q, g, pos, exclude), whole, torch.float32)
    assert max(r for r, _, _ in seen) == 37 and max(c for _, c, _ in seen) == 101
    assert {lib for _, _, lib in seen} == {library}
    # OpenBLAS's GEMMs run on its own threads: the counts between them on one torch thread
    counted = []
    real_count = counting.count_above
    monkeypatch.setattr(counting, "count_above", lambda *a: counted.append(a[2]) or real_count(*a))
    reference.target_rank_counts(q, g, pos, exclude)
    assert counted and set(counted) == {library != "torch"}
    assert_counts_equal(two_stage.target_rank_counts(q, g, pos, exclude), whole, torch.bfloat16)
