#!/usr/bin/env bash
# Everything only a GPU can show, in one go, results under one folder, within 6 minutes:
#
#   bash benches/gpu_check.sh OUT_DIR          # or with $OUT set (the device tool sets it)
#   bash benches/gpu_check.sh --plan           # print the steps and their limits, run nothing
#
# A lent GPU has 15 minutes in all, start-up included, and a rerun must fit: the step
# limits below add up to at most 360 s (checked before anything runs, and by
# tests/test_gpu_check.py). In order of what matters most:
#
# 1. correctness: the Triton kernels compiled for real, the `gpu` tests (rank counts,
#    top-K, max-sim, mixed sweep, copies tying, against the reference);
# 2. the scoring plan (benches/scoring_suite.py --plan gpu): CIRR size, 10k x 1M and
#    10k x 10M fp16, sweeps, BLIP-2 max-sim; Triton against torch matmul+topk, with
#    roofline fractions and recall checks; each job its own process and time limit;
# 3. real-size embedding throughput (fp16, bf16);
# 4. fp16 ZeRO-2 fine-tuning steps of BLIP-Large, plain batch vs gradient-cached
#    batch 1024. The GPU image has no deepspeed: `bash benches/gpu_wheels.sh` fills
#    wheels/ (5.6 MiB) and the device tool carries it (carry: ["wheels"]).
#    faiss-gpu is not carried: its wheel (129 MiB for 1.15.1, 63 MiB for
#    faiss-gpu-cu12 1.9.0) does not fit beside deepspeed in the 64 MiB the device
#    tool carries, so the GPU scoring table has no faiss row.
#
# Copy the JSON files into results/reference/ and run `python -m harness.report` for
# BENCHMARKS.md.
set -u
BUDGET=360
# limit (s) | name | command
STEPS=(
  "10|gpu name|nvidia-smi"
  "25|install carried wheels|pip install --quiet --no-index --find-links wheels deepspeed"
  "120|gpu tests|python -m pytest -m gpu tests/coir_kernels -q -p no:cacheprovider"
  "110|scoring plan|python -m benches.scoring_suite --plan gpu --out \$OUT/scoring_gpu.json --timeout 30"
  "40|embedding throughput|python -m harness.throughput --device cuda --precision fp16 bf16 --batch-size 32 --repeats 2 --out \$OUT/throughput_gpu.json"
  "55|ZeRO-2 fine-tuning steps|python -m benches.train_step_gpu --out \$OUT"
)

total=0
for step in "${STEPS[@]}"; do total=$((total + ${step%%|*})); done
echo "gpu_check: ${#STEPS[@]} steps, limits add up to ${total} s (budget ${BUDGET} s)"
for step in "${STEPS[@]}"; do
  IFS='|' read -r limit name command <<< "$step"
  printf '  %4s s  %s\n' "$limit" "$name"
done
if [ "$total" -gt "$BUDGET" ]; then
  echo "gpu_check: the step limits exceed ${BUDGET} s; shorten a step" >&2
  exit 2
fi
[ "${1:-}" = "--plan" ] && exit 0

OUT=${1:-${OUT:-gpu_results}}
mkdir -p "$OUT"
export OUT TRITON_INTERPRET=0 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
for step in "${STEPS[@]}"; do
  IFS='|' read -r limit name command <<< "$step"
  log="$OUT/$(echo "$name" | tr ' ' '_').txt"
  if [ "$name" = "install carried wheels" ] && ! ls wheels/*.whl >/dev/null 2>&1; then
    echo "== $name: no wheels/ folder (run benches/gpu_wheels.sh and carry it)" | tee "$log"
    continue
  fi
  if [ "$name" = "ZeRO-2 fine-tuning steps" ] && ! python -c "import deepspeed" 2>/dev/null; then
    echo "== $name: deepspeed not installed, not measured" | tee "$log"
    continue
  fi
  echo "== $name (limit ${limit} s)"
  start=$SECONDS
  timeout "$limit" bash -c "$command" > "$log" 2>&1
  echo "== rc=$? after $((SECONDS - start)) s; last lines of $log:"
  tail -3 "$log"
done
ls -l "$OUT"
