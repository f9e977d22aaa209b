# Two commands: `make demo` to see the gateway work, `make test` to run every check.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
RUNTIME := $(VENV)/.runtime-stamp
# The package as `pip install .` builds it (request path compiled with mypyc, setup.py), in
# a venv of its own: the tests run against it too, and the bench measures it.
CVENV  ?= .venv-compiled
CBIN   := $(CVENV)/bin
CSTAMP := $(CVENV)/.installed-stamp
WHEELS := build/wheel
# the sources, and their directories (whose times change when a module is added or deleted)
SOURCES := $(shell find gateway buildsystem -name '*.py' -o -type d -not -name __pycache__) \
	setup.py pyproject.toml

.PHONY: test demo lint format bench mutation clean

# The demo needs only what `pip install .` brings; tests and linters come with `make test`.
$(RUNTIME): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	@touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

# Rebuilt when a source changes (about 90 s); CLERK_GATEWAY_COMPILE=require: a failed compile
# fails here instead of passing quietly as the pure fallback.
$(CSTAMP): $(STAMP) $(SOURCES)
	@test -x $(CBIN)/python || $(PYTHON) -m venv $(CVENV)
	$(CBIN)/python -m pip install --quiet --upgrade pip
	rm -rf $(WHEELS)
	CLERK_GATEWAY_COMPILE=require $(CBIN)/python -m pip wheel --quiet --no-deps -w $(WHEELS) .
	$(CBIN)/python -m pip install --quiet --force-reinstall --no-deps $(WHEELS)/*.whl
	$(CBIN)/python -m pip install --quiet "$$(ls $(WHEELS)/*.whl)[test]"
	@touch $(CSTAMP)

# Every test twice: on the sources (pure Python, the fallback), then on the installed,
# compiled package (--import-mode=append: the checkout's gateway/ must not shadow it;
# tests/conftest.py refuses to run if the build is not the one announced).
test: $(STAMP) $(CSTAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict gateway
	CLERK_GATEWAY_TEST_BUILD=python $(BIN)/pytest -W error
	CLERK_GATEWAY_TEST_BUILD=compiled $(CBIN)/pytest -W error --import-mode=append -p no:cacheprovider

demo: $(RUNTIME)
	$(BIN)/clerk-gateway demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict gateway

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The installed (compiled) package; make bench BENCH_VENV=.venv measures the pure sources.
# e.g. make bench BENCH_ARGS="--json bench.json"; see bench/run.py --help
BENCH_ARGS ?=
BENCH_VENV ?= $(CVENV)
bench: $(STAMP) $(CSTAMP)
	$(BENCH_VENV)/bin/python bench/run.py $(BENCH_ARGS)

# Mutation testing of the pure modules, each against its own unit tests (not run by `make
# test` or CI; about 10 minutes). MODULES="paths headers" runs some; docs/mutation.md explains.
mutation: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,mutation]'
	$(BIN)/python scripts/mutation.py $(MODULES)

clean:
	rm -rf $(VENV) $(CVENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis build *.egg-info
