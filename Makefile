# Everything a new machine needs: `make demo` runs the working example, `make test` the tests.
# Both create .venv on first use (torch CPU wheel, Cython, then fastBPE without build isolation).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.biomine-installed

.PHONY: venv test test-fast demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q cython
	$(BIN)/pip install -q --no-build-isolation fastBPE==0.1.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

demo: venv
	$(BIN)/biomine demo

clean:
	rm -rf $(VENV) build *.egg-info
