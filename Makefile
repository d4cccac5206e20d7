# The two commands a newcomer needs: `make demo` (run it end to end) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The local broker: plaintext on 9092, or secured (sasl_ssl, ssl, sasl_plaintext) on 9093.
KAFKA_SECURITY ?= plaintext
KAFKA_PORT ?= $(if $(filter plaintext,$(KAFKA_SECURITY)),9092,9093)
# 1 broker, or a KRaft cluster of N (plaintext, ports KAFKA_PORT.. KAFKA_PORT+N-1, RF 3).
KAFKA_BROKERS ?= 1
# Where the local broker keeps its pid, config, log and data (`make dev`, `make kafka-*`).
KAFKA_STATE_DIR ?= $(CURDIR)/$(if $(filter-out 1,$(KAFKA_BROKERS)),.kafka-cluster,$(if $(filter plaintext,$(KAFKA_SECURITY)),.kafka,.kafka-$(KAFKA_SECURITY)))
DAGSTER_PORT ?= 3000
# The local schema registry (`make registry-*`; `make dev LOCAL_REGISTRY=1` starts it unless
# SCHEMA_REGISTRY_URL names one, and Dagster gets its URL).
REGISTRY_PORT ?= 8081
REGISTRY_STATE_DIR ?= $(CURDIR)/.registry
# `make test` runs this many pytest workers: the suite mostly waits on brokers, webservers and
# paced replays, so more workers than cores still shorten it (TEST_WORKERS=0: one process).
TEST_WORKERS ?= 3
export DAGSTER_PORT KAFKA_PORT KAFKA_STATE_DIR
DAGSTER_POSTGRES_VERSION := 0.29.27
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: setup demo dev test test-unit kafka-up kafka-down kafka-status kafka-logs registry-up registry-down registry-status registry-logs schemas bench-prepare bench-replay bench-parallel bench-compare bench screenshots data clean

# The virtualenv, re-made when pyproject.toml changes.
setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# setuptools warns about every editable install (a build-backend warning pip shows even with --quiet).
	PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install --quiet -e ".[dev]"
	@# dagster-postgres 0.29.27 pins dagster==1.13.27 (see pyproject.toml's deploy extra).
	$(PY) -m pip install --quiet --no-deps "dagster-postgres==$(DAGSTER_POSTGRES_VERSION)"
	touch $@

# Broker up (unless KAFKA_BOOTSTRAP_SERVERS names one), 15 days prepared, one day replayed, read back.
demo: setup
	$(PY) scripts/demo.py

# The Dagster UI (webserver + daemon) on 127.0.0.1:$(DAGSTER_PORT), on the same DAGSTER_HOME as
# `make demo`. Unless KAFKA_BOOTSTRAP_SERVERS names a cluster, the local broker is started (or found
# running) and Dagster is given its address, read from the broker's own report.
dev: setup
	@set -o pipefail; \
	if [ -z "$$KAFKA_BOOTSTRAP_SERVERS" ]; then \
	  KAFKA_BOOTSTRAP_SERVERS=$$($(PYTHON) scripts/local_kafka.py up --port $(KAFKA_PORT) --brokers $(KAFKA_BROKERS) --state-dir "$(KAFKA_STATE_DIR)" \
	    | tee /dev/stderr | sed -n 's/^ *bootstrap servers: *//p') || exit 1; \
	  export KAFKA_BOOTSTRAP_SERVERS; \
	fi; \
	if [ -n "$(LOCAL_REGISTRY)" ] && [ -z "$$SCHEMA_REGISTRY_URL" ]; then \
	  SCHEMA_REGISTRY_URL=$$($(PYTHON) scripts/local_registry.py up --port $(REGISTRY_PORT) --state-dir "$(REGISTRY_STATE_DIR)" \
	    | sed -n 's/^export SCHEMA_REGISTRY_URL=//p') || exit 1; \
	  export SCHEMA_REGISTRY_URL; \
	fi; \
	[ -z "$$SCHEMA_REGISTRY_URL" ] || echo "Schema registry (typed message formats): $$SCHEMA_REGISTRY_URL"; \
	echo "Dagster UI: http://127.0.0.1:$(DAGSTER_PORT)  (Kafka: $$KAFKA_BOOTSTRAP_SERVERS, DAGSTER_HOME=$$DAGSTER_HOME)"; \
	exec $(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p $(DAGSTER_PORT)

# Everything: unit, integration (real broker started by the test session) and end-to-end tests.
test: setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=20

test-unit: setup
	$(PY) -m pytest -n 2 -m "not integration and not e2e"

# Secured: stdout is only `export KAFKA_...` lines: eval "$$(make -s kafka-up KAFKA_SECURITY=sasl_ssl)"
# A cluster of three: make kafka-up KAFKA_BROKERS=3 (and the same KAFKA_BROKERS for status / down).
kafka-up:
	@$(PYTHON) scripts/local_kafka.py up --port $(KAFKA_PORT) --brokers $(KAFKA_BROKERS) --security $(KAFKA_SECURITY) --state-dir "$(KAFKA_STATE_DIR)"

kafka-down:
	$(PYTHON) scripts/local_kafka.py down --brokers $(KAFKA_BROKERS) --security $(KAFKA_SECURITY) --state-dir "$(KAFKA_STATE_DIR)"

kafka-status:
	$(PYTHON) scripts/local_kafka.py status --brokers $(KAFKA_BROKERS) --security $(KAFKA_SECURITY) --state-dir "$(KAFKA_STATE_DIR)"

# The end of the broker's log (every node's for KAFKA_BROKERS=3); LINES=200 for more.
kafka-logs:
	@$(PYTHON) scripts/local_kafka.py logs --brokers $(KAFKA_BROKERS) --security $(KAFKA_SECURITY) --state-dir "$(KAFKA_STATE_DIR)" --lines $(or $(LINES),60)

# The local schema registry (Apicurio, Confluent-compatible API): eval "$$(make -s registry-up)"
registry-up:
	@$(PYTHON) scripts/local_registry.py up --port $(REGISTRY_PORT) --state-dir "$(REGISTRY_STATE_DIR)"

registry-down:
	$(PYTHON) scripts/local_registry.py down --state-dir "$(REGISTRY_STATE_DIR)"

registry-status:
	$(PYTHON) scripts/local_registry.py status --state-dir "$(REGISTRY_STATE_DIR)"

registry-logs:
	@$(PYTHON) scripts/local_registry.py logs --state-dir "$(REGISTRY_STATE_DIR)" --lines $(or $(LINES),60)

# Re-compile page_view.proto into the descriptor the package loads. protoc comes from grpcio-tools,
# in a venv of its own: it pins a protobuf older than the project's.
schemas:
	test -x .protoc/bin/python || $(PYTHON) -m venv .protoc
	.protoc/bin/python -m pip install --quiet grpcio-tools
	cd clickstream_dagster/schemas && ../../.protoc/bin/python -m grpc_tools.protoc -I. --descriptor_set_out=page_view.desc page_view.proto

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

# This tree's replay core (run_replay, both clients) side by side with AGAINST's, in one run on one
# broker. HEAD~1 follows the first parent: after a merge, the main line before it.
AGAINST ?= HEAD~1
bench-compare: setup
	$(PY) benchmarks/bench_compare.py --against "$(AGAINST)"

bench: bench-prepare bench-replay bench-parallel

screenshots: setup
	$(PY) scripts/screenshots.py

clean:
	rm -rf $(VENV) .kafka .kafka-* benchmarks/out
