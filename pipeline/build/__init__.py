"""Building and loading each model family: one module per family, used by training, loading and benchmarks."""
