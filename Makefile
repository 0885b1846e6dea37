# Two entry points do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is pinned to the local CPU build here; see README "Installing on a GPU machine".
CONSTRAINTS ?= constraints.txt

.PHONY: install install-test demo test bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[sim,logging]"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[sim,logging,test]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(VENV)/bin/driftkit demo

test: install-test
	$(PY) -m pytest -n 2 -q

bench: install
	$(PY) benchmarks/decoder_latency.py

clean:
	rm -rf $(VENV) .pytest_cache
