"""Fine-tuning: the loop, its settings and recipes, what an epoch iterates, engines (plain torch, DeepSpeed
ZeRO), gathered negatives, gradient caching, losses and the resumable state.
May import harness.core, harness.suites and backbones."""
