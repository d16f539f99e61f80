"""From a split to its figures: embedding (and its cache), validation, the scoring
protocols (CIRR, FashionIQ, CIRCO), metrics and server files, and the papers' numbers.
May import harness.core, harness.suites, kernels and backbones."""
