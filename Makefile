# Two commands on a fresh machine: `make demo` runs the whole system on embedded defaults,
# `make test` runs the test suite. Both install into .venv first: every package at the version of
# constraints/lock.txt (the images use it too), torch's CPU build from constraints/cpu.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench lock clean

$(STAMP): pyproject.toml constraints/lock.txt constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints/lock.txt -c constraints/cpu.txt -e ".[test,bench]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/loopfree run examples/prompts.txt --tiny --seed 0
	@echo "The CLI is installed in $(VENV): run $(BIN)/loopfree (e.g. $(BIN)/loopfree submissions),"
	@echo "or 'source $(BIN)/activate' once to type plain 'loopfree'."

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/bench_sampler.py

# After changing a dependency in pyproject.toml: install it without the old lock (what is installed
# and still fits stays), run the tests, then `make lock` writes the versions now installed.
lock:
	$(BIN)/pip install -q -c constraints/cpu.txt -e ".[test,bench]"
	$(BIN)/python constraints/make_lock.py

clean:
	rm -rf $(VENV) .pytest_cache
