# Every target installs what it needs and is safe to run again.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TESTBED := PYTHONPATH=hack $(PYTHON) -m testbed

.PHONY: bench bench-capacity bench-operator bench-canary bench-rebalance help dev test lint typecheck imports pytest tools prometheus node-packages cluster-up cluster-down cluster-status gateway-api demo clean generate

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

dev: $(VENV)/.installed  ## virtualenv with the project (editable) and its dev tools

$(VENV)/.installed: pyproject.toml constraints.txt
	@echo "==> creating $(VENV) and installing the project with its dev dependencies"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

prometheus:  ## prometheus and promtool from Debian's package
	hack/install-prometheus.sh

node-packages:  ## what real nodes take from Debian: runc, CNI plugins, iptables, socat, buildah, debootstrap, ipset
	hack/install-node-packages.sh

tools:  ## build etcd, Kubernetes, KWOK and helm from Go modules (cached outside git)
	$(TESTBED) build

lint: dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: dev
	$(VENV)/bin/mypy

imports: dev
	$(VENV)/bin/lint-imports

# The e2e stories mostly wait on SLO windows, so E2E_JOBS of them run side by side
# (pytest-xdist, one shared cluster); unit and integration tests, whose load and latency
# figures want the machine to themselves, run first and alone, and the tests that restart
# the control plane under everyone's feet run last and alone, after the few whose tight
# wall-clock bounds a neighbour's load would break (marked timed), also alone.
E2E_JOBS ?= 2
PYTEST := REAL_NODES=$(REAL_NODES) $(PY) -m pytest --durations=20

pytest: dev prometheus tools $(if $(filter 1,$(REAL_NODES)),node-packages,)
ifneq ($(strip $(PYTEST_ARGS)),)
	$(PYTEST) $(PYTEST_ARGS)
else
	@rc=0; \
	echo "==> unit and integration tests, one at a time"; \
	$(PYTEST) tests/unit tests/integration || rc=1; \
	echo "==> e2e tests, $(E2E_JOBS) side by side"; \
	$(PYTEST) tests/e2e -m "not disruptive and not timed" -n $(E2E_JOBS) || rc=1; \
	echo "==> e2e tests with tight time bounds, then those that restart the control plane, alone"; \
	$(PYTEST) tests/e2e -m "timed or disruptive" || rc=1; \
	exit $$rc
endif

test: lint typecheck imports pytest  ## ruff, mypy --strict, import-linter, then every test (unit, integration, e2e)

cluster-up: tools $(if $(filter 0,$(REAL_NODES)),,node-packages)  ## start the local cluster with a real node per datacenter (REAL_NODES=0: KWOK only); kubeconfig in .cluster/
	$(TESTBED) up $(if $(filter 0,$(REAL_NODES)),--kwok-only,)

cluster-down:  ## stop the local cluster and remove its state
	$(TESTBED) down

cluster-status:  ## what the running cluster looks like
	$(TESTBED) status

gateway-api: cluster-up  ## install the Gateway API CRDs (standard channel) into the cluster
	$(TESTBED) gateway-api

demo: dev prometheus tools $(if $(filter 0,$(REAL_NODES)),,node-packages)  ## the whole mission on real containers: chart, traffic, a bad rollout, a sick datacenter (REAL_NODES=0: simulated nodes; results in demo-out/)
	PYTHONPATH=hack $(PY) -m testbed.demo $(if $(filter 0,$(REAL_NODES)),--kwok,) $(DEMO_ARGS)

generate: dev  ## CRDs from the pydantic models (crds/ and the chart's copy), the chart's values table, the README's capacity plan
	$(VENV)/bin/imageserver-operator crds --write crds
	cp crds/*.yaml charts/imageserver-operator/crds/
	$(VENV)/bin/python hack/chart_docs.py
	$(VENV)/bin/python hack/capacity_example.py

bench: dev  ## data plane vs thumbor 7 and nginx on one corpus, in one run (not a test)
	PYTHONPATH=hack:tests $(PY) bench/imageserver_bench.py $(BENCH_ARGS)

bench-rebalance: dev  ## storage nodes moving data (rebalance, handoff) vs a durable local copy of the same files
	PYTHONPATH=hack:tests $(PY) bench/rebalance_bench.py $(BENCH_ARGS)

bench-capacity: dev  ## per-unit costs on this machine, written as the capacity planner's defaults
	PYTHONPATH=hack:tests $(PY) bench/capacity_bench.py $(BENCH_ARGS)

bench-operator: dev tools  ## the operator on the local cluster: apply → Ready, 200 ImageServers, idle cost
	$(TESTBED) up --kwok-only >/dev/null
	PYTHONPATH=hack:tests $(PY) bench/operator_bench.py $(BENCH_ARGS)

bench-canary: dev  ## canary analysis vs Flagger and Argo Rollouts on a bad revision (computed, not timed)
	PYTHONPATH=operator $(PY) bench/canary_bench.py $(BENCH_ARGS)

clean: cluster-down  ## remove the virtualenv and local state (the binary cache stays)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
