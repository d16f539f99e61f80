"""Benchmarks: `pytest benches --benchmark-only`, and the large scoring suite
(`python -m benches.scoring_suite`). A package, so its modules import each other
and run as `python -m benches.<module>` from the repository root."""
