# medledger: `make demo` and `make test` set up whatever is missing, then run.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
TOOLS  := $(CURDIR)/.tools
CMT    := $(TOOLS)/bin/cometbft
ABCI_CLI := $(TOOLS)/bin/abci-cli
CMT_VERSION := v0.38.25

.PHONY: setup demo test lint typecheck pytest system cometbft proto bench hapi clean

setup: $(VENV)/.installed system cometbft proto

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# Debian packages the tests and the demo use (PostgreSQL server, Chromium); installed only when missing.
system:
	@bash scripts/setup-system.sh

cometbft: $(CMT) $(ABCI_CLI)

$(CMT):
	@bash scripts/setup-cometbft.sh $(CMT_VERSION) $(TOOLS)

# The kvstore example app of the same CometBFT module, as a socket app: `medledger bench
# cometbft` compares medledger with it (same version, never @latest).
$(ABCI_CLI):
	GOBIN=$(TOOLS)/bin go install github.com/cometbft/cometbft/abci/cmd/abci-cli@$(CMT_VERSION)

proto: $(VENV)/.installed $(CMT)
	@bash scripts/gen-proto.sh $(CMT_VERSION) $(BIN)/python

demo: setup
	$(BIN)/medledger demo $(DEMO_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

typecheck: $(VENV)/.installed
	$(BIN)/mypy src tests

pytest: setup
	PATH="$(TOOLS)/bin:$$PATH" $(BIN)/pytest $(PYTEST_ARGS)

test: setup lint typecheck pytest

bench: setup
	$(BIN)/medledger bench

# The fair peer of `medledger bench hapi`: HAPI FHIR's JPA server (bench/hapi), a runnable jar
# built with Maven from Maven Central (Java 17). Benchmarks only: `make test` never builds it.
HAPI_JAR := bench/hapi/target/hapi-peer.jar

hapi: $(HAPI_JAR)

$(HAPI_JAR): bench/hapi/pom.xml $(shell find bench/hapi/src -type f 2>/dev/null)
	cd bench/hapi && mvn -B -q package -DskipTests

clean:
	rm -rf $(VENV) $(TOOLS) build bench/hapi/target
