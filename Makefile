# streamscore — set-up and entry points. `make demo` and `make test` work on a fresh machine.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
JARSTAMP := .cache/jars/.fetched
SRC_JAVA := $(shell find flink-conf/src -name '*.java') $(wildcard schemas/*.avsc)

.PHONY: help install chromium jars models kafka-start kafka-stop demo test test-unit test-integration lint typecheck \
        cluster-start cluster-stop cluster-submit bench parity clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "need $(PY)"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(STAMP) jars chromium  ## virtual environment + JVM parts + headless Chromium (report tests)

chromium:  ## Debian's Chromium for the HTML report's browser test (root, or sudo where there is one)
	@command -v chromium >/dev/null 2>&1 || { SUDO=$$(command -v sudo >/dev/null && [ "$$(id -u)" != 0 ] && echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

$(JARSTAMP): flink-conf/pom.xml $(SRC_JAVA)
	mvn -q -B -f flink-conf/pom.xml package
	touch $@

jars: $(JARSTAMP)  ## fetch Kafka + Flink connector jars from Maven Central, build the decode UDF jar

models: install  ## train the models if the registry is missing or stale (spec changed)
	$(BIN)/streamscore train --if-missing

kafka-start: install  ## start the local KRaft broker and create the topics
	$(BIN)/streamscore kafka start

kafka-stop:  ## stop the local broker
	-$(BIN)/streamscore kafka stop

demo: install models  ## the whole pipeline on 1M events; prints a JSON summary last
	$(BIN)/streamscore demo

cluster-start: install  ## standalone Flink session cluster (from the apache-flink wheel)
	$(BIN)/streamscore cluster start
cluster-stop:
	-$(BIN)/streamscore cluster stop
cluster-submit: install  ## submit the job to the session cluster (flink run -py)
	$(BIN)/streamscore cluster submit

bench: install models  ## throughput/latency vs bare-SQL ceiling and plain-Python peer; appends bench/results.jsonl
	$(BIN)/streamscore bench

parity: install models  ## reference vs Beam vs Flink job on 200k generated events
	$(BIN)/streamscore parity

lint: install
	$(BIN)/ruff check transforms jobs models tests
typecheck: install
	$(BIN)/mypy transforms

test-unit: install
	$(BIN)/pytest -q tests/unit transforms jobs

test-integration: install models
	$(BIN)/pytest -q tests/integration

test: install models lint typecheck  ## every test; integration tests start and stop their own broker
	$(BIN)/pytest -q

clean:
	rm -rf .cache $(VENV) models/artifacts models/registry.json
