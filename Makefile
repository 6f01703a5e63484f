# Two commands on a fresh machine: `make run` and `make test`.
# Everything is installed into ./.venv by uv (itself bootstrapped into ./.tools), and the OpenAPI
# tools the tests run into ./.venv-openapi.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION ?= 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
OPENAPI_VENV := .venv-openapi
PY := $(VENV)/bin/python
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: install run test lint format test-only bench clean reliability soak broker-users screenshots

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(VENV)/.synced: $(UV) pyproject.toml uv.lock libs/*/pyproject.toml services/*/pyproject.toml examples/*/pyproject.toml
	$(UV) sync --frozen --python $(PYTHON)
	touch $@

# The OpenAPI tools the tests run, pinned in tools/openapi/requirements.txt, kept out of .venv: they
# need pydantic, and Litestar loads its pydantic plugins into the gateway whenever pydantic is there.
$(OPENAPI_VENV)/.synced: $(UV) tools/openapi/requirements.txt
	$(UV) venv --quiet --allow-existing --python $(PYTHON) $(OPENAPI_VENV)
	$(UV) pip sync --quiet --python $(OPENAPI_VENV)/bin/python tools/openapi/requirements.txt
	touch $@

install: $(VENV)/.synced $(OPENAPI_VENV)/.synced

run: install
	$(PY) scripts/run.py

# The broker's users (agentbus.common.broker), once, for docker-compose.yml: var/broker/auth.conf
# for NATS and var/broker/<user>.env for each service. Existing passwords are kept; delete a .env
# file to change that user's. For Kubernetes, as Secrets on stdout (deploy/README.md):
#   make -s broker-users BROKER_ARGS=--k8s | kubectl apply -f -
broker-users: install
	@$(PY) -m agentbus.common.broker var/broker $(BROKER_ARGS)

lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test-only: install
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=20 $(PYTEST_ARGS)

test: lint test-only

# The dashboard's pages, as its browser tests see them, into docs/screenshots/*.png.
screenshots: install
	AGENTBUS_SCREENSHOTS=1 $(PY) -m pytest -q tests/e2e/test_dashboard.py

# Every benchmark against the real services (SQLite and PostgreSQL); writes docs/benchmarks.md.
# Not part of `make test`. BENCH_ARGS="--quick" for a smoke run, "--compare REF" to measure a git
# ref beside this checkout (prints both, writes nothing), "--help" for the options.
bench: install
	$(PY) -m bench $(BENCH_ARGS)

# Fault injection into real processes, written up in docs/reliability.md (also part of `make test`).
reliability: install
	rm -f var/reliability-results.jsonl
	AGENTBUS_RELIABILITY_RESULTS=var/reliability-results.jsonl $(PY) -m pytest -q -m faults tests/e2e/test_faults.py
	$(PY) scripts/reliability_report.py var/reliability-results.jsonl docs/reliability.md "make reliability"

# The long variant: 1,000 runs per fault (tens of minutes), its own section of docs/reliability.md.
# Not part of `make test`.
soak: install
	rm -f var/soak-results.jsonl
	AGENTBUS_SOAK=1 AGENTBUS_RELIABILITY_RESULTS=var/soak-results.jsonl $(PY) -m pytest -q -m faults tests/e2e/test_faults.py
	$(PY) scripts/reliability_report.py var/soak-results.jsonl docs/reliability.md "make soak"

clean:
	rm -rf $(VENV) $(OPENAPI_VENV) $(TOOLS) var .pytest_cache .ruff_cache
