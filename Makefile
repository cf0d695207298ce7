# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv, installs brinicle-etl, runs the sample pipeline and a search
#   make test   creates .venv, installs brinicle-etl, runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STORE ?= brinicle_store
# CPU-only machines: torch is pinned to its CPU build (a local version, `+cpu`, that PyPI
# does not carry), so pip can never pull several GB of CUDA packages. pip takes it from
# the configured indexes or wheel directories; failing that, from PyTorch's CPU index.
# On a GPU machine run `make demo TORCH_CONSTRAINTS=` to let pip choose.
TORCH_CONSTRAINTS ?= constraints/torch-cpu.txt
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
PIP_CONSTRAINTS := $(if $(TORCH_CONSTRAINTS),-c $(TORCH_CONSTRAINTS))
INSTALL := $(BIN)/pip install --quiet $(PIP_CONSTRAINTS) -e '.[all,dev]'

.PHONY: setup browser demo dagster test test-slow test-all lint bench clean

$(BIN)/.installed: pyproject.toml $(TORCH_CONSTRAINTS)
	@echo "== installing brinicle-etl and its dependencies into $(VENV) (about 2 minutes the first time: torch is most of it)"
	$(PYTHON) -m venv $(VENV)
	$(INSTALL) $(if $(TORCH_CONSTRAINTS),|| { echo "== install failed (if pip found no torch 2.13.0+cpu above, that is expected): retrying with $(TORCH_CPU_INDEX)"; $(INSTALL) --extra-index-url $(TORCH_CPU_INDEX); })
	touch $@

setup: $(BIN)/.installed

demo: setup
	@echo "== day 1: build the catalogue collection from sample_data/products.csv"
	$(BIN)/brinicle-etl ingest sample_data/products.csv --collection shop/products --mode build --store $(STORE)
	@echo "== day 2: the next export changes prices, rewrites descriptions, adds and drops products"
	$(BIN)/brinicle-etl ingest sample_data/products_day2.csv --collection shop/products --on-conflict update --sync --store $(STORE)
	@echo "== search by meaning"
	$(BIN)/brinicle-etl search shop/products "waterproof boots for hiking in the rain" --k 5 --store $(STORE)

dagster: setup
	mkdir -p .dagster_home && touch .dagster_home/dagster.yaml
	DAGSTER_HOME=$(CURDIR)/.dagster_home VIRTUAL_ENV=$(CURDIR)/$(VENV) PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dg dev -h 127.0.0.1 -p 3000

# The /docs browser test drives Chromium from the OS packages: installed here when we can.
browser:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "== installing chromium (Debian package) for the /docs browser test"; \
	    apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
	      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; } \
	      || echo "== could not install chromium: the browser test will be skipped"; \
	  else \
	    echo "== no chromium (apt-get install chromium): the browser test will be skipped"; \
	  fi; \
	fi

test: setup browser
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

test-all: setup
	$(BIN)/python -m pytest -q -m "slow or not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: setup
	$(BIN)/pip install --quiet $(PIP_CONSTRAINTS) -e '.[all,dev,bench]'
	$(BIN)/python benchmarks/bench_store.py
	$(BIN)/python benchmarks/bench_ingest.py
	$(BIN)/python benchmarks/bench_sql.py
	$(BIN)/python benchmarks/bench_engine.py
	$(BIN)/python benchmarks/bench_peers.py

clean:
	rm -rf $(VENV) $(STORE) .pytest_cache .mypy_cache .ruff_cache
