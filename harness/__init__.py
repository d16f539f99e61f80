"""coir-bench harness: suites, metrics, fine-tuning, results and reports."""
