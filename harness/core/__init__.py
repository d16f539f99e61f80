"""What every stage uses: errors, atomic writes, paths, progress, the registry,
precision, processes (torchrun ranks) and provenance. Imports no other harness package."""
