# Two commands: `make demo` to see the gateway work, `make test` to run every check.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: test demo lint format bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,fast]'
	@touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict gateway
	$(BIN)/pytest -W error

demo: $(STAMP)
	$(BIN)/clerk-gateway check config/routes.yaml
	$(BIN)/clerk-gateway explain GET / --anonymous
	$(BIN)/clerk-gateway explain GET /dashboard --anonymous
	$(BIN)/clerk-gateway explain GET /admin --claims '{"sub":"user_member","exp":4102444800,"azp":"http://127.0.0.1:8080","metadata":{"role":"member"}}'
	$(BIN)/clerk-gateway explain GET /admin --claims '{"sub":"user_admin","exp":4102444800,"azp":"http://127.0.0.1:8080","metadata":{"role":"admin"}}'
	$(BIN)/clerk-gateway explain GET /admin/../admin --header 'Sec-Fetch-Dest: document'

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict gateway

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis build *.egg-info
