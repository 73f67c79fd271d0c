# Quickstart: `make demo` runs the main job on the embedded default; `make test` runs lint and tests.
# Both create .venv and install into it when needed: the demo only the runtime, the tests also the
# test, benchmark and serving extras (torch, transformers, PEFT: numerical references and peers).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.installed-runtime
EXTRAS := $(VENV)/.installed-test
T5_REFERENCE := t5 babel rouge-score nltk sacrebleu tabulate colorama lxml portalocker

.PHONY: install install-runtime test lint format demo clean

$(RUNTIME): setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip==25.3"
	$(BIN)/pip install -q -c constraints.txt -e .
	touch $(RUNTIME)

$(EXTRAS): $(RUNTIME)
	# The CPU build of torch first, so nothing pulls a CUDA torch (torch is a test-only reference).
	$(BIN)/pip install -q -c constraints.txt torch
	$(BIN)/pip install -q -c constraints.txt -e ".[test,bench,serve]"
	# The original T5 package, a test-only reference (tests/tasks_t5_compat_test.py), with --no-deps:
	# its declared requirements (mesh-tensorflow, seqio-nightly, ...) would replace the pinned stack.
	$(BIN)/pip install -q --no-deps -c constraints.txt $(T5_REFERENCE)
	touch $(EXTRAS)

install-runtime: $(RUNTIME)

install: $(EXTRAS)

lint: $(EXTRAS)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(EXTRAS)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

demo: $(RUNTIME)
	rm -rf runs/demo
	$(BIN)/python tools/demo.py --model_dir runs/demo

clean:
	rm -rf $(VENV) runs
