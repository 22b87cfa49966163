"""Benchmarks: `make bench ARGS="ingest --sizes 1000000,4000000"` (see bench/__main__.py)."""
