# Quick start: `make demo` (runs the offline demo), `make test` (runs the tests).
# Both create .venv and install ccfv into it on first use; torch is pinned to the CPU build
# (requirements-ci.txt) so that pip never pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements-ci.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-ci.txt
	$(BIN)/python -m pip install --quiet -c requirements-ci.txt -e ".[test,nnunet,ray]"
	touch $@

demo: install
	$(BIN)/ccfv demo

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/bench_estimator.py

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
