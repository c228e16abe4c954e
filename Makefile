# The front door: `make run` and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install tools run test lint bench clean

install: $(VENV)/.installed          ## create .venv and install the project with its test tools

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,lint,fast,bench]'
	touch $@

tools:                               ## the programs the tests drive (redis-server, haproxy, chromium, curl)
	bash .ci/ensure-tools

run: install                          ## serve the API on the embedded store and stream a demo run
	$(BIN)/python -m service --demo

test: install tools                   ## the whole suite, against real redis-server, haproxy, Chromium
	$(BIN)/python -m pytest

lint: install                         ## ruff and mypy (strict on the packages)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: install                        ## the benchmark: table on stdout, JSON in bench/results/
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) *.egg-info .mypy_cache .ruff_cache .pytest_cache
