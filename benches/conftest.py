"""Benches run on at most 2 torch threads, like the tests, unless COIR_BENCH_THREADS says."""

import os

import torch

torch.set_num_threads(int(os.environ.get("COIR_BENCH_THREADS", min(2, os.cpu_count() or 1))))
