# Everything a new machine needs: `make demo` runs the working example, `make test` the tests.
# Both create .venv on first use (torch CPU wheel, Cython, then fastBPE without build isolation).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.biomine-installed

.PHONY: venv lint test test-fast demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@echo "venv: creating $(VENV) (first use only; a few minutes in all)"
	$(PY) -m venv $(VENV)
	@echo "venv: [1/5] pip"
	$(BIN)/pip install -q --upgrade pip
	@echo "venv: [2/5] torch 2.13.0, the CPU wheel (the largest download)"
	$(BIN)/pip install -q torch==2.13.0
	@echo "venv: [3/5] cython (fastBPE builds with it)"
	$(BIN)/pip install -q cython
	@echo "venv: [4/5] fastBPE 0.1.0 (compiled here)"
	$(BIN)/pip install -q --no-build-isolation fastBPE==0.1.0
	@echo "venv: [5/5] biomine and its dependencies (ray, pyarrow, deltalake, ...), editable"
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)
	@echo "venv: ready; activate with . $(VENV)/bin/activate"

# The layout rules of docs/architecture.md (import-linter), ruff's checks and format, mypy's types
# ([tool.mypy] in pyproject.toml), before any test runs.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

test: lint
	$(BIN)/python -m pytest -q

test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow"

demo: venv
	$(BIN)/biomine demo out/demo

# CPU smoke runs of every benchmark, each printing its ratio against the reference (benchmarks/README.md
# gives the full-size commands; the GPU table comes from benchmarks/bench_generation.py on a GPU).
bench: venv
	$(BIN)/python benchmarks/bench_tokenizer.py
	$(BIN)/python benchmarks/bench_parse.py --articles 5000 --repeat 1 --no-save
	$(BIN)/python benchmarks/bench_generation.py --quick
	$(BIN)/python benchmarks/bench_scale.py --files 4 --articles 500 --updates 2 --overhead-docs 500
	$(BIN)/python benchmarks/bench_pipeline.py --quick
	$(BIN)/python benchmarks/bench_classify.py --quick

clean:
	rm -rf $(VENV) build *.egg-info
