# The front door: `make run` and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Which locked set `make install` puts in .venv: dev (everything), service, runner or sdk.
LOCK   ?= requirements/dev.lock
# uv resolves the locks (fast, and it writes hashes for every platform's files); it is
# installed into .venv only by `make lock`, never needed to install.
UV_SPEC ?= uv>=0.5,<1
LOCKS  := dev sdk runner service

.PHONY: install tools run test lint bench lock lock-upgrade lock-one clean

install: $(VENV)/.installed          ## create .venv and install the locked dev set (tests, lint, bench)

$(VENV)/.installed: $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes --no-deps -r $(LOCK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

tools:                               ## the programs the tests drive (redis-server, haproxy, nginx, chromium, curl, node)
	bash .ci/ensure-tools
	bash .ci/ensure-node-tools

run: install                          ## serve the API on the embedded store and stream a demo run
	$(BIN)/python -m service --demo

test: install tools                   ## the whole suite, against real redis-server, haproxy, Chromium
	$(BIN)/python -m pytest

lint: install                         ## ruff and mypy (strict on the packages)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: install                        ## the benchmark: table on stdout, JSON in bench/results/
	$(BIN)/python -m bench

# `make lock` re-resolves requirements/*.lock from pyproject.toml, keeping every pin that
# still fits (add a dependency, run it, commit the locks); `make lock-upgrade` moves every
# pin to the newest release the ranges allow.
lock: $(BIN)/uv                       ## refresh requirements/*.lock after a change to pyproject.toml
	@for set in $(LOCKS); do $(MAKE) -s --no-print-directory lock-one SET=$$set || exit 1; done

lock-upgrade: $(BIN)/uv               ## the same, moving every pin to the newest allowed release
	@for set in $(LOCKS); do $(MAKE) -s --no-print-directory lock-one SET=$$set UV_FLAGS=--upgrade || exit 1; done

# One lock: dev has every extra and is resolved first; the SDK's (base dependencies only),
# the runner's and the service's are then held to dev's versions, so each user's set is a
# subset of what CI tests. Universal (markers for every platform), for Python 3.11.
lock-one:
	$(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	  --custom-compile-command 'make lock' $(UV_FLAGS) \
	  $(if $(filter dev,$(SET)),--all-extras,-c requirements/dev.lock) \
	  $(if $(filter dev sdk,$(SET)),,--extra $(SET)) \
	  pyproject.toml requirements/build.in -o requirements/$(SET).lock
	@echo "requirements/$(SET).lock: $$(grep -c '^[a-z0-9]' requirements/$(SET).lock) packages"

$(BIN)/uv:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q '$(UV_SPEC)'

clean:
	rm -rf $(VENV) *.egg-info .mypy_cache .ruff_cache .pytest_cache
