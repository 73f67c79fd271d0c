# Quickstart: `make demo` runs the main job on the embedded default; `make test` runs lint and tests.
# Both create .venv and install into it when needed: the demo only the runtime, the tests also the
# test, benchmark and serving extras (torch, transformers, PEFT: numerical references and peers).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.installed-runtime
EXTRAS := $(VENV)/.installed-test
T5_REFERENCE := t5 babel rouge-score nltk sacrebleu tabulate colorama lxml portalocker
# T5X, Flaxformer, AirIO and jestimator from source beside the repository (CI's copy of shared/; never
# copied into the project). When the folder exists the tests put it on PYTHONPATH, with the registry
# packages T5X needs installed beside it (--no-deps, pinned in constraints.txt), and run every T5X test;
# without it (a user's clone) those tests skip with a reason.
T5X_SRC := $(abspath ../shared/t5x)
T5X_HELPERS := fiddle chex jaxtyping cached_property wadler_lindig libcst typeguard graphviz toolz grain \
  portpicker aqtp
T5X_STAMP := $(VENV)/.installed-t5x
ifneq ($(wildcard $(T5X_SRC)/t5x/train.py),)
TEST_T5X := $(T5X_STAMP)
TEST_ENV := PYTHONPATH=$(T5X_SRC)$(if $(PYTHONPATH),:$(PYTHONPATH)) PROMPT_TUNING_EXPECT_T5X=1
endif

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

$(T5X_STAMP): $(EXTRAS)
	$(BIN)/pip install -q --no-deps -c constraints.txt $(T5X_HELPERS)
	touch $(T5X_STAMP)

install-runtime: $(RUNTIME)

install: $(EXTRAS)

lint: $(EXTRAS)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(EXTRAS)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint $(TEST_T5X)
	$(TEST_ENV) $(BIN)/python -m pytest -q -rs --durations=15 -n 2 --dist loadfile tests

demo: $(RUNTIME)
	rm -rf runs/demo
	$(BIN)/python tools/demo.py --model_dir runs/demo

clean:
	rm -rf $(VENV) runs
