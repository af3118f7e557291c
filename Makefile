# The two entry points of the README. Each creates .venv and installs what it needs.
VENV ?= .venv
PY := $(VENV)/bin/python
# glibc returns large freed blocks to the OS after every pass unless told not to (docs/benchmarks.md).
export MALLOC_MMAP_MAX_ := 0
export MALLOC_TRIM_THRESHOLD_ := 100000000000
export MALLOC_ARENA_MAX := 1

.PHONY: install run maps openapi test lint bench

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[worker,test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/xai serve

maps: install
	$(VENV)/bin/xai explain --quick --out out/maps --sheet docs/maps.png

openapi: install
	$(VENV)/bin/xai openapi

lint: install
	$(PY) -m ruff check . && $(PY) -m ruff format --check . && $(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest

bench: install
	$(PY) -m bench.gradient_family
	$(PY) -m bench.perturbation
	$(PY) -m bench.pointing_game
	$(PY) -m bench.quality
	$(PY) -m bench.rise_convergence
	$(PY) -m bench.service
