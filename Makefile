# Quick start: `make demo` (runs the offline demo), `make test` (runs the tests).
# Both create .venv and install ccfv into it on first use, every package at the exact version
# of requirements-lock.txt (the versions CI tested; torch is the CPU build that
# requirements-ci.txt pins, so that pip never pulls a multi-GB CUDA build).
# `make lock` rewrites requirements-lock.txt from the packages installed in .venv
# (docs/how-to/develop.md says when and how).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCK := requirements-lock.txt

.PHONY: install demo test bench lock upgrade-lock clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements-ci.txt $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-ci.txt -c $(LOCK)
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e ".[test,nnunet,ray]"
	touch $@

demo: install
	$(BIN)/ccfv demo

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/bench_estimator.py

# Refresh the lock: upgrade within pyproject.toml's ranges in a fresh .venv, run the tests,
# then write what is installed. `make lock` alone re-writes the lock from the current .venv.
lock:
	@test -x $(BIN)/python || { echo "no $(VENV): run make install (or make upgrade-lock) first"; exit 1; }
	{ echo "# Exact versions of every package CI and \`make\` install (pip constraints: \`pip install -c\`)."; \
	  echo "# Written by \`make lock\` from the tested environment; see docs/how-to/develop.md to refresh it."; \
	  echo "# torch is the CPU build (+cpu) that requirements-ci.txt pins; ccfv itself is not listed."; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v '^#\|^-e'; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	@echo "wrote $(LOCK) ($$(grep -vc '^#' $(LOCK)) packages)"

upgrade-lock:
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-ci.txt
	$(BIN)/python -m pip install --quiet -e ".[test,nnunet,ray]"
	$(BIN)/python -m pytest -q
	$(MAKE) lock
	touch $(VENV)/.installed

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
