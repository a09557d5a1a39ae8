# Self-installing targets: the first run creates .venv and installs smtrnn with pinned dependencies.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the datasets (data/README.md) are npm packages; npm ci writes this file, so a deleted
# data/node_modules comes back on the next make
DATA := data/node_modules/.package-lock.json

.PHONY: demo demo-page test lint bench bench-cuda bench-breakdown horizon results realdata decoder-positions length teacher teacher-long teacher-width kv-step kv-recipe clean

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
	$(BIN)/smtrnn experiment demo --jobs 2 --out runs/demo --json runs/demo/demo.json --markdown runs/demo/demo.md

# the committed page of the demo (docs/demo.md): the same runs, reused when runs/demo holds them
demo-page: $(STAMP)
	$(BIN)/smtrnn experiment demo --jobs 2 --out runs/demo --json docs/demo.json --markdown docs/demo.md

# ruff (lint and format) over everything committed, mypy over the whole package
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy src

test: lint
	$(BIN)/python -m pytest

# where an SMT step's time goes at T = 256, 512 and 1,024 (docs/step-breakdown.md): a few minutes
bench-breakdown: $(STAMP)
	$(BIN)/smtrnn bench --breakdown --threads 1 --json docs/step-breakdown.json --markdown docs/step-breakdown.md

bench: $(STAMP)
	$(BIN)/smtrnn bench --quick --threads 1 --json docs/benchmarks.json --markdown docs/benchmarks.md

# the same on a CUDA machine, bf16 autocast beside fp32 (docs/cuda/benchmarks.md): a few minutes on one GPU
bench-cuda: $(STAMP)
	$(BIN)/smtrnn bench --quick --device cuda --autocast --json docs/cuda/benchmarks.json --markdown docs/cuda/benchmarks.md

# every study: `smtrnn experiment NAME`, resumable in runs/NAME, its page and figures in docs/; the
# committed rows stand in for runs not under runs/NAME where their configs are today's (--keep-rows), so
# a target trains only the runs its page lacks. Hours below: training summed over a page's runs (its header)
STUDY = $(BIN)/smtrnn experiment $(1) --preset cpu --jobs 2 --out runs/$(1) --json docs/$(2).json --markdown docs/$(2).md --figures docs/figures

# what makes the RNN alone keep what its teacher stores (docs/horizon.md): 51 runs at T=64, 3 h 26 min
horizon: $(STAMP)
	$(call STUDY,horizon,horizon) --keep-rows

# the synthetic grid against BPTT (docs/results.md): 234 runs, about 48 h over the runs done, many sittings on 2 cores
results: $(STAMP)
	$(call STUDY,compare,results) --keep-rows

# BPTT against SMT->DMT on MNIST, Quick, Draw! and Brown (docs/realdata.md): 100 runs, 22 h
realdata: $(STAMP)
	$(call STUDY,realdata,realdata) --keep-rows

# sampled decoder windows against every window (docs/decoder_positions.md): about 10 min on 2 cores
decoder-positions: $(STAMP)
	$(call STUDY,decoder-positions,decoder_positions)

# retrieval at T = 64 to 1,024 against BPTT (docs/length.md): 112 runs, 21 h, about 11 h on 2 cores;
# filter it (--lengths 256 --cells tanh,gru) for a first look
length: $(STAMP)
	$(call STUDY,length,length) --keep-rows

# how fast the teacher learns copy, stack and parity, beside BPTT (docs/teacher.md): 273 runs, 10 h
teacher: $(STAMP)
	$(call STUDY,teacher,teacher) --keep-rows

# what makes the teacher learn stack at T=256, and does SMT->DMT gain (docs/teacher-long.md): 15 runs, 4 h 46 min
teacher-long: $(STAMP)
	$(call STUDY,teacher-long,teacher-long) --keep-rows

# the teacher's width against copy's string at T=64 and 128 (docs/teacher-width.md): 15 runs, 5 h 35 min
teacher-width: $(STAMP)
	$(call STUDY,teacher-width,teacher-width) --keep-rows

# which step can read key-value's answer from the teacher's memory (docs/kv-step.md): 18 runs, 3 h 22 min
kv-step: $(STAMP)
	$(call STUDY,kv-step,kv-step) --keep-rows

# key-value with the GRU at equal steps, SMT->DMT on its own labels against BPTT, trained at T and at 16, the MLP cell with a deeper step, the cells without gates with a memory of 256 (docs/kv-recipe.md): 76 runs
kv-recipe: $(STAMP)
	$(call STUDY,kv-recipe,kv-recipe) --keep-rows

clean:
	rm -rf $(VENV) runs
