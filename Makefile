# Two entry points, both from a fresh clone (see README):
#   make demo   -> creates .venv, installs rattr_jax, runs the quick study (`rattr study --preset quick`)
#   make test   -> creates .venv, installs rattr_jax[test,bench], runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

.PHONY: demo test install install-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

install: $(BIN)/python
	$(PIP) install --quiet -e .

install-test: $(BIN)/python
	# torch==2.13.0 (CPU wheel) comes from the `bench` extra; install it first so no
	# other torch build is ever resolved.
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[test,bench]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null

demo: install
	$(BIN)/rattr study --preset quick --out out/study

test: install-test
	JAX_PLATFORMS=cpu $(BIN)/python -m pytest -n 2 --durations=30 -q
