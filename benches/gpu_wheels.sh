#!/usr/bin/env bash
# Fill wheels/ with what benches/gpu_check.sh installs on the GPU machine, which has
# no deepspeed, no faiss and no network: carry the folder with the device tool
# (carry: ["wheels"], 64 MiB in all for everything carried).
#
#   bash benches/gpu_wheels.sh           # then: du -sh wheels
#
# - deepspeed 0.19.8 as a pure-Python wheel (its ops are JIT-compiled when used),
#   and the dependencies the GPU image may lack, for CPython 3.12 on x86_64;
# - not faiss-gpu: faiss-gpu 1.15.1 is 129 MiB and faiss-gpu-cu12 1.9.0 63 MiB
#   (measured 2026-12-01), so neither fits beside deepspeed in 64 MiB. The GPU
#   scoring table has no faiss row; faiss-cpu is measured on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p wheels
DS_BUILD_OPS=0 python -m pip wheel --quiet --no-deps --wheel-dir wheels deepspeed==0.19.8
python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --dest wheels \
  einops hjson msgpack ninja py-cpuinfo pydantic pydantic-core annotated-types typing-inspection
du -sh wheels
