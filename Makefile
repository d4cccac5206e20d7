# The two commands a newcomer needs: `make demo` (run it end to end) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
KAFKA_PORT ?= 9092
DAGSTER_POSTGRES_VERSION := 0.29.27
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: setup demo dev test test-unit kafka-up kafka-down kafka-status bench-prepare bench-replay bench-parallel bench screenshots data clean

# The virtualenv, re-made when pyproject.toml changes.
setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@# dagster-postgres 0.29.27 pins dagster==1.13.27 (see pyproject.toml's deploy extra).
	$(PY) -m pip install --quiet --no-deps "dagster-postgres==$(DAGSTER_POSTGRES_VERSION)"
	touch $@

# Broker up (unless KAFKA_BOOTSTRAP_SERVERS names one), 15 days prepared, one day replayed, read back.
demo: setup
	$(PY) scripts/demo.py

# The Dagster UI (webserver + daemon) on 127.0.0.1:3000, on the same DAGSTER_HOME as `make demo`.
dev: setup
	@if [ -z "$$KAFKA_BOOTSTRAP_SERVERS" ]; then $(PYTHON) scripts/local_kafka.py up --port $(KAFKA_PORT); fi
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# Everything: unit, integration (real broker started by the test session) and end-to-end tests.
test: setup
	$(PY) -m pytest

test-unit: setup
	$(PY) -m pytest -m "not integration and not e2e"

kafka-up:
	$(PYTHON) scripts/local_kafka.py up --port $(KAFKA_PORT)

kafka-down:
	$(PYTHON) scripts/local_kafka.py down

kafka-status:
	$(PYTHON) scripts/local_kafka.py status

# Re-generate the committed sample log (deterministic: the same bytes every time).
data: setup
	$(PY) -m clickstream_dagster.generator --rows 45000 --out data/clickstream.csv --summary data/clickstream.summary.json

bench-prepare: setup
	$(PY) benchmarks/bench_prepare.py

bench-replay: setup
	@command -v kcat >/dev/null || (apt-get update -qq && apt-get install -y -qq kcat) || echo "kcat unavailable: skipping its column"
	$(PY) benchmarks/bench_replay.py

# Aggregate replay rate, one replay vs two at once into different topics.
bench-parallel: setup
	$(PY) benchmarks/bench_parallel.py

bench: bench-prepare bench-replay bench-parallel

screenshots: setup
	$(PY) scripts/screenshots.py

clean:
	rm -rf $(VENV) .kafka benchmarks/out
