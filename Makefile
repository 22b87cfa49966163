# The two commands: `make demo` (the whole pipeline on generated data) and `make test` (the test suite).
# Both run set-up first; set-up skips whatever is already in place.
.PHONY: setup demo test cluster-test lint bench gpu-check lock clean

setup:
	@scripts/setup.sh

demo: setup
	@scripts/demo.sh $(ARGS)

# PYTEST_ARGS adds to it (e.g. PYTEST_ARGS="tests/test_ingest.py -k quarantine").
test: setup
	.venv/bin/python -m pytest $(PYTEST_ARGS)

# The pipeline on a Spark standalone cluster (a master, 1-core workers, on loopback); part of `make test` too.
cluster-test: setup
	.venv/bin/python -m pytest tests/test_end_to_end.py $(PYTEST_ARGS)

lint: setup
	.venv/bin/ruff check behavior_spark jobs tests scripts bench

BENCH_ARGS ?= stages --sizes 1000000,4000000,16000000
bench: setup
	.venv/bin/python -m bench $(or $(ARGS),$(BENCH_ARGS))

# Samples/s of the feed alone, the model alone and the two together (on the CPU where there is no GPU).
gpu-check: setup
	.venv/bin/python -m bench gpu-check --sizes $(or $(ROWS),400000)

# Re-resolve requirements/lock.txt from requirements/base.txt in a scratch environment.
lock:
	rm -rf .cache/lock-venv && "$$(scripts/find-python.sh)" -m venv .cache/lock-venv
	.cache/lock-venv/bin/pip install --quiet "pip<25" "setuptools<70" wheel && .cache/lock-venv/bin/pip install --quiet -r requirements/base.txt
	{ head -2 requirements/lock.txt; .cache/lock-venv/bin/pip freeze --exclude-editable | grep -vi '^horovod=='; } > requirements/lock.new
	mv requirements/lock.new requirements/lock.txt && rm -rf .cache/lock-venv

clean:
	rm -rf lakehouse spark-warehouse
