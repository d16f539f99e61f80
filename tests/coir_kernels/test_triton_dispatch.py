"""How the public functions reach the kernels: dispatch by device and request, the
interpreter's speed, the fallback to a fresh process, and the kernels lowered to
sm_90 machine code without a GPU."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any import of triton

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import coir_kernels  # noqa: E402
from coir_kernels import reference  # noqa: E402
from coir_kernels import triton_ops as tk  # noqa: E402
from tests.coir_kernels.problems import (  # noqa: E402
    USABLE,
    assert_counts_equal,
    assert_topk_equal,
    make_problem,
)

REPO = Path(__file__).resolve().parents[2]


def test_interpreter_tests_in_a_fresh_process(tmp_path):
    """Only when triton was imported before tests/conftest.py could switch the
    interpreter on: the Triton test files again, in a process of its own."""
    if USABLE:
        pytest.skip("the interpreter tests run in this process")
    env = dict(os.environ, TRITON_INTERPRET="1")
    files = sorted(str(p) for p in Path(__file__).parent.glob("test_triton_*.py"))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files,
         "-m", "not gpu", "--basetemp", str(tmp_path / "inner")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout


def test_the_kernels_are_interpreted_here():
    assert tk.INTERPRETED
    assert tk.MAX_K == coir_kernels.TRITON_MAX_K


def test_dispatch_runs_triton_on_request_and_reference_otherwise(monkeypatch):
    q, g, positives, exclude = make_problem(11, 60, 16, seed=10)
    expected = reference.target_rank_counts(q, g, positives, exclude)
    expected_top = reference.topk_excluding(q, g, 5, exclude)
    calls = []
    real_rank, real_topk = tk.target_rank_counts, tk.topk_excluding
    monkeypatch.setattr(tk, "target_rank_counts", lambda *a: calls.append("rank") or real_rank(*a))
    monkeypatch.setattr(tk, "topk_excluding", lambda *a: calls.append("topk") or real_topk(*a))
    # explicit, by argument or environment: the kernels (interpreted on these CPU tensors)
    assert_counts_equal(coir_kernels.target_rank_counts(q, g, positives, exclude, impl="triton"),
                        expected, torch.float32)
    monkeypatch.setenv("COIR_KERNELS", "triton")
    assert_topk_equal(coir_kernels.topk_excluding(q, g, 5, exclude), expected_top, torch.float32, q, g)
    assert calls == ["rank", "topk"]
    # not covered: multi-vector features and k > 64 run the reference
    g3 = g[:, None, :].expand(60, 3, 16)
    coir_kernels.target_rank_counts(q, g3, positives, exclude)
    coir_kernels.topk_excluding(q, g, 65, exclude)
    # auto: the reference for CPU tensors
    monkeypatch.setenv("COIR_KERNELS", "auto")
    coir_kernels.target_rank_counts(q, g, positives, exclude)
    coir_kernels.topk_excluding(q, g, 5, exclude)
    assert calls == ["rank", "topk"]
    # explicit triton on CPU without the interpreter: a clear error
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        coir_kernels.topk_excluding(q, g, 5, exclude, impl="triton")
    with pytest.raises(ValueError, match="unknown kernel implementation"):
        coir_kernels.topk_excluding(q, g, 5, exclude, impl="cuda-magic")


def test_interpreter_runs_a_full_block_problem_quickly():
    """The interpreter's cost is per program; one full tile set stays well under
    the per-test budget (256 x 2048 x 256)."""
    q, g, positives, exclude = make_problem(256, 2048, 256, num_pos=1, seed=11)
    start = time.perf_counter()
    tk.target_rank_counts(q, g, positives, exclude)
    tk.topk_excluding(q, g, 50, exclude)
    assert time.perf_counter() - start < 20


COMPILE_CHECK = r"""
import json, os, sys
os.environ["TRITON_INTERPRET"] = "0"
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from coir_kernels.triton_ops import mixed, rank_counts, topk

config = dict(BLOCK_Q=128, BLOCK_G=128, BLOCK_D=64)  # block_config's fp16 rank tiles
single = dict(S_TOK=1, T_TOK=1)
sizes = dict(num_queries="i32", num_gallery="i32", dim="i32", num_copy_groups="i32", stride_qm="i64",
             stride_qd="i64", stride_gn="i64", stride_gd="i64")
copies = dict(copy_group_ptr="*i64", copy_score_ptr="*fp32")
offsets = dict(offset_ptr="*fp32")  # compiled with HAS_OFFSET: the offset code included
jobs = [
    (rank_counts._positive_scores_kernel, 8,
     dict(q_ptr="*fp16", g_ptr="*fp16", **copies, **offsets, pos_ptr="*i64", out_ptr="*fp32", **sizes,
          num_groups="i32"),
     dict(P=2, P_PAD=2, **config, **single, HAS_OFFSET=True)),
    (rank_counts._rank_count_kernel, 8,
     dict(q_ptr="*fp16", g_ptr="*fp16", **copies, **offsets, pos_ptr="*i64", pos_score_ptr="*fp32",
          exclude_ptr="*i64", greater_ptr="*i32", equal_ptr="*i32", **sizes, num_gallery_blocks="i32",
          num_splits="i32"),
     dict(P=2, P_PAD=2, **config, **single, HAS_OFFSET=True)),
    (topk._topk_kernel, 4,
     dict(q_ptr="*fp16", g_ptr="*fp16", **copies, **offsets, exclude_ptr="*i64", out_ptr="*i64", **sizes,
          num_gallery_blocks="i32", num_splits="i32"),
     dict(K_PAD=64, BLOCK_Q=64, BLOCK_G=128, BLOCK_D=64, **single, HAS_OFFSET=True)),
    # BLIP-2 max-sim: 32 x 32 tokens, 4 x 4 items per 128 x 128 token tile
    (rank_counts._rank_count_kernel, 8,
     dict(q_ptr="*fp16", g_ptr="*fp16", **copies, **offsets, pos_ptr="*i64", pos_score_ptr="*fp32",
          exclude_ptr="*i64", greater_ptr="*i32", equal_ptr="*i32", **sizes, num_gallery_blocks="i32",
          num_splits="i32"),
     dict(P=1, P_PAD=2, BLOCK_Q=4, BLOCK_G=4, BLOCK_D=64, S_TOK=32, T_TOK=32, HAS_OFFSET=False)),
    (topk._topk_kernel, 4,
     dict(q_ptr="*fp16", g_ptr="*fp16", **copies, **offsets, exclude_ptr="*i64", out_ptr="*i64", **sizes,
          num_gallery_blocks="i32", num_splits="i32"),
     dict(K_PAD=64, BLOCK_Q=4, BLOCK_G=4, BLOCK_D=64, S_TOK=32, T_TOK=32, HAS_OFFSET=False)),
    (mixed._mixed_rank_count_kernel, 8,
     dict(q_ptr="*fp16", t_ptr="*fp16", f_ptr="*fp16", g_ptr="*fp16", **copies, w_ptr="*fp32",
          pos_ptr="*i64", parts_score_ptr="*fp32", exclude_ptr="*i64", counts_ptr="*i32", num_queries="i32",
          num_gallery="i32", dim="i32", num_copy_groups="i32", num_weights="i32", stride_qm="i64", stride_qd="i64",
          stride_gn="i64", stride_gd="i64", num_gallery_blocks="i32", num_splits="i32"),
     dict(P=1, **config)),
]
layouts = []
for fn, warps, signature, constexprs in jobs:
    constexprs = dict(constexprs, PRECISION="tf32", HAS_COPIES=True)  # the copies' code included
    signature = dict(signature, **{name: "constexpr" for name in constexprs})
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    binary = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps))
    assert binary.asm["cubin"], fn.__name__
    layouts.append(sorted({line.split("=", 1)[1].strip()
                           for line in binary.asm["ttgir"].splitlines() if line.startswith("#mma")}))
print(json.dumps(layouts))
"""


def test_kernels_compile_for_hopper_with_one_dot_layout_in_both_rank_passes(tmp_path):
    """No GPU needed: Triton lowers the kernels to sm_90 machine code on the CPU
    (in a subprocess: this one's Triton is interpreted). Catches code the
    interpreter accepts but the compiler does not, and checks that pass 1 and pass
    2 get the same dot lowering (MMA version, instruction shape, warps), which is
    what makes pass 1's positive scores pass 2's bits."""
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path), PYTHONPATH=str(REPO))
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    result = subprocess.run([sys.executable, "-c", COMPILE_CHECK], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    positive_pass, count_pass, topk, *others = json.loads(result.stdout.strip().splitlines()[-1])
    assert positive_pass and positive_pass == count_pass
    assert "versionMajor = 3" in positive_pass[0]  # wgmma on Hopper
    assert topk and all(others)  # max-sim rank and top-K, the mixed rank pass

