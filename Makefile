# Two entry points for a newcomer: `make demo` and `make test`. Both build .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test test-fast lint demo venv clean-venv

venv: $(STAMP)

# torch is pinned first: the pinned wheels come from the local cache, an unpinned torch is a multi-GB download.
$(STAMP): setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# the lint gate (configuration in pyproject.toml), then every test, on up to 4 cores (pytest-xdist)
test: lint
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist worksteal --durations=12 tests

# while developing: the tests not marked slow (no end-to-end nnU-Net runs, no DDP)
test-fast: $(STAMP)
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist worksteal -m "not slow" tests

lint: $(STAMP)
	$(PY) -m ruff check .

demo: $(STAMP)
	$(VENV)/bin/unisegdiff demo

clean-venv:
	rm -rf $(VENV)
