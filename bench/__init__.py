"""Benchmarks: `make bench` runs them all; `make bench ARGS="stages --sizes 1000000"` runs one (bench/__main__.py)."""
