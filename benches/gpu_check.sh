#!/usr/bin/env bash
# Everything only a GPU can show, in one go, results under one folder:
#
#   bash benches/gpu_check.sh OUT_DIR          # or with $OUT set (the device tool sets it)
#
# 1. the Triton kernels compiled for real: the `gpu` tests (rank counts, top-K,
#    max-sim, mixed sweep against the reference);
# 2. scoring benches (benches/scoring_suite.py --plan gpu): CIRR size, 10k x 1M,
#    10k x 10M fp16, sweeps of 1/66/231 triples, BLIP-2 max-sim; Triton against
#    torch matmul+topk, with roofline fractions and recall checks;
# 3. fp16 ZeRO-2 fine-tuning steps of BLIP-Large, plain batch vs gradient-cached
#    batch 1024 (needs deepspeed: the GPU image has none; put its wheel, and
#    faiss-gpu's if wanted, under wheels/ and carry that folder);
# 4. real-size embedding throughput (fp16, bf16).
# Each step has its own time limit, so one hang cannot eat the session; copy the
# JSON files into results/reference/ and run `python -m harness.report` for BENCHMARKS.md.
set -u
OUT=${1:-${OUT:-gpu_results}}
mkdir -p "$OUT"
export TRITON_INTERPRET=0 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
step() { local limit=$1; shift; echo "== $* (limit ${limit}s)"; timeout "$limit" "$@"; echo "== rc=$?"; }

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
if ls wheels/*.whl wheels/*.tar.gz >/dev/null 2>&1; then
  step 120 pip install --no-index --find-links wheels deepspeed faiss-gpu-cu12 > "$OUT/pip.txt" 2>&1
fi
step 240 python -m pytest -m gpu tests/test_triton_kernels.py -q -p no:cacheprovider \
  2>&1 | tee "$OUT/gpu_tests.txt" | tail -5
step 300 python -m benches.scoring_suite --plan gpu --out "$OUT/scoring_gpu.json" --timeout 120
if python -c "import deepspeed" 2>/dev/null; then
  step 200 python -m benches.train_step_gpu --out "$OUT"
else
  echo "deepspeed not installed: fine-tuning steps not measured" | tee "$OUT/train_step_skipped.txt"
fi
step 150 python -m harness.throughput --device cuda --precision fp16 bf16 --batch-size 32 \
  --out "$OUT/throughput_gpu.json"
ls -l "$OUT"
