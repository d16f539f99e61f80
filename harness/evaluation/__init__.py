"""From a split to its figures: embedding (and its cache), validation, the scoring
protocols (CIRR, FashionIQ, CIRCO, WebVid-CoVR) and their named rules (where the
reference stands, how multi-vector tokens meet), metrics, tie-ordered top-K lists and
server files, and the papers' numbers.
May import harness.core, harness.suites, coir_kernels and backbones."""
