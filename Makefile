# Self-installing targets: the first run creates .venv and installs smtrnn with pinned dependencies.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the datasets (data/README.md) are npm packages; npm ci writes this file, so a deleted
# data/node_modules comes back on the next make
DATA := data/node_modules/.package-lock.json

.PHONY: demo demo-page test lint bench horizon results results-budget realdata clean

$(STAMP): pyproject.toml $(DATA)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

$(DATA): data/package-lock.json
	@command -v npm >/dev/null || { echo "make: npm (Node.js) is needed to install the datasets in data/" >&2; exit 1; }
	npm ci --ignore-scripts --prefix data
	touch $(DATA)

# the main job: its table is printed, its page written under runs/demo (the checkout stays clean)
demo: $(STAMP)
	$(BIN)/smtrnn demo --out runs/demo --json runs/demo/demo.json --markdown runs/demo/demo.md

# the committed page of the demo (docs/demo.md): the same runs, reused when runs/demo holds them
demo-page: $(STAMP)
	$(BIN)/smtrnn demo --out runs/demo --json docs/demo.json --markdown docs/demo.md

# ruff (lint and format) over everything, mypy over the core modules
CORE := src/smtrnn/cells.py src/smtrnn/teacher.py src/smtrnn/rnn.py src/smtrnn/models.py src/smtrnn/methods \
	src/smtrnn/train.py src/smtrnn/checkpoint.py src/smtrnn/metrics.py src/smtrnn/config.py src/smtrnn/run.py src/smtrnn/evaluate.py \
	src/smtrnn/sweep.py src/smtrnn/tasks src/smtrnn/api.py
lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy $(CORE)

test: lint
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/smtrnn bench --quick --threads 1 --json docs/benchmarks.json --out-md docs/benchmarks.md

# what makes the RNN alone keep what its teacher stores (docs/horizon.md): about 2 h on 2 cores, resumable in runs/horizon
# (--preset full: every variant, about 6 h)
horizon: $(STAMP)
	$(BIN)/smtrnn horizon --preset cpu --jobs 2 --out runs/horizon --json docs/horizon.json --markdown docs/horizon.md --figures docs/figures

# the synthetic grid against BPTT (docs/results.md): about 3.3 h on 2 cores (6 h 32 min of single-thread training), resumable in runs/compare
# (--preset full: every point at the recipe's budget, more than 12 h, estimated, not run)
results: $(STAMP)
	$(BIN)/smtrnn compare --preset cpu --jobs 2 --out runs/compare --json docs/results.json --markdown docs/results.md --figures docs/figures

# what four times the budget adds where the teacher limits SMT->DMT at T=16 (docs/results-budget.md):
# copy, stack and parity, 2,000 steps instead of 500; about 15 min on 2 cores, resumable in runs/compare-4x
results-budget: $(STAMP)
	$(BIN)/smtrnn compare --preset cpu --tasks copy,stack,parity --cells tanh --methods bptt,smt+dmt --lengths 16 \
		--steps 2000 --dmt-steps 400 --jobs 2 --out runs/compare-4x --json docs/results-budget.json \
		--markdown docs/results-budget.md --figures docs/figures/budget

# BPTT against SMT->DMT on MNIST, Quick, Draw! and Brown: about 25 min on 2 cores, resumable in runs/realdata
realdata: $(STAMP)
	$(BIN)/smtrnn realdata --preset cpu --jobs 2 --out runs/realdata --json docs/realdata.json --markdown docs/realdata.md --figures docs/figures

clean:
	rm -rf $(VENV) runs
