"""python -m harness.report RESULTS... [--out BENCHMARKS.md]: the tables of
BENCHMARKS.md from result files (harness/reports/benchmarks.py)."""

from harness.reports.benchmarks import main

if __name__ == "__main__":
    raise SystemExit(main())
