# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv, installs brinicle-etl, runs the sample pipeline and a search
#   make test   creates .venv, installs brinicle-etl, runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STORE ?= brinicle_store
# CPU-only machines: pin torch to the CPU build so pip does not pull several GB of CUDA
# packages. On a GPU machine run `make demo TORCH_CONSTRAINTS=` to let pip choose.
TORCH_CONSTRAINTS ?= constraints/torch-cpu.txt
PIP_CONSTRAINTS := $(if $(TORCH_CONSTRAINTS),-c $(TORCH_CONSTRAINTS))

.PHONY: setup demo dagster test test-slow test-all lint bench clean

$(BIN)/.installed: pyproject.toml $(TORCH_CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(PIP_CONSTRAINTS) -e '.[all,dev]'
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
	mkdir -p .dagster_home
	DAGSTER_HOME=$(CURDIR)/.dagster_home $(BIN)/dagster dev -m pipelines -h 127.0.0.1 -p 3000

test: setup
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
	$(BIN)/python benchmarks/bench_store.py
	$(BIN)/python benchmarks/bench_ingest.py
	$(BIN)/python benchmarks/bench_sql.py

clean:
	rm -rf $(VENV) $(STORE) .pytest_cache .mypy_cache .ruff_cache
