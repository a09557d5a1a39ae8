# Self-installing targets: the first run creates .venv and installs smtrnn with pinned dependencies.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/smtrnn demo --json docs/demo.json --markdown docs/demo.md

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/smtrnn bench --quick --json docs/benchmarks.json --out-md docs/benchmarks.md

clean:
	rm -rf $(VENV) runs
