"""From a split to its figures: embedding (and its cache), validation, the scoring
protocols (CIRR, FashionIQ, CIRCO, WebVid-CoVR) and their named rules (where the
reference stands, how multi-vector tokens meet), metrics, tie-ordered top-K lists and
server files, the papers' numbers, and scoring over the ranks' gallery shards under
torchrun (shard_scoring.py, the door every protocol scores through; sharded.py,
sharded_mixed.py).
May import harness.core, harness.suites, coir_kernels and backbones."""
