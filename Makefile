# Two commands on a fresh machine: `make demo` runs the whole system on embedded defaults,
# `make test` runs the test suite. Both install into .venv first (CPU torch, pinned).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints/cpu.txt -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/loopfree run examples/prompts.txt --tiny --seed 0

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/bench_sampler.py

clean:
	rm -rf $(VENV) .pytest_cache
