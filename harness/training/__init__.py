"""Fine-tuning: the loop, its settings and recipes, engines (plain torch, DeepSpeed
ZeRO), gathered negatives, gradient caching, losses and the resumable state.
May import harness.core, harness.suites and backbones."""
