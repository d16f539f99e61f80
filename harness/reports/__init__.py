"""Tables from result files only: per-run markdown, BENCHMARKS.md and its sections.
May import harness.core, harness.evaluation (metric names, protocol tables, paper
numbers) and harness.config (a recorded config's identity)."""
