# The two commands: `make demo` (the whole pipeline on generated data) and `make test` (the fast tier of the tests).
# `make check` is what CI runs: every tier, lint, types and the docs. Set-up runs first and skips what is in place.
.PHONY: setup demo test check cluster-test lint types docs bench gpu-check lock clean

# The slow tiers (pyproject.toml's markers): left out of `make test`, run by `make check`.
SLOW_TIERS = cluster or connect or submit or network or large or bench

setup:
	@scripts/setup.sh

demo: setup
	@scripts/demo.sh $(ARGS)

# PYTEST_ARGS adds to it (e.g. PYTEST_ARGS="tests/test_ingest.py -k quarantine").
test: setup
	.venv/bin/python -m pytest -m "not ($(SLOW_TIERS))" $(PYTEST_ARGS)

check: setup lint types docs
	.venv/bin/python -m pytest $(PYTEST_ARGS)

# The pipeline on a Spark standalone cluster (a master, 1-core workers, on loopback); part of `make check`.
cluster-test: setup
	.venv/bin/python -m pytest -m cluster $(PYTEST_ARGS)

lint: setup
	.venv/bin/ruff check behavior_spark jobs tests scripts bench
	.venv/bin/ruff format --check behavior_spark jobs tests scripts bench
	.venv/bin/python scripts/check_structure.py

types: setup
	.venv/bin/mypy

# The documentation site (docs/, mkdocs.yml), strict: a dead link or a page missing from the nav fails.
docs: setup
	.venv/bin/python scripts/config_reference.py --check
	.venv/bin/mkdocs build --strict --site-dir .cache/site

BENCH_ARGS ?= stages --sizes 1000000,4000000,16000000
bench: setup
	.venv/bin/python -m bench $(or $(ARGS),$(BENCH_ARGS))

# Samples/s of the feed alone, the model alone and the two together (on the CPU where there is no GPU).
gpu-check: setup
	.venv/bin/python -m bench gpu-check --sizes $(or $(ROWS),400000)

# Re-resolve requirements/lock.txt (runtime) and requirements/dev-lock.txt (dev and test tools).
lock: setup
	.venv/bin/python scripts/lock.py

clean:
	rm -rf lakehouse spark-warehouse
