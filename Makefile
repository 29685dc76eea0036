# Two commands do all the set-up on a fresh machine:
#   make serve   -> venv + install + start the service (embedded mode, bundled model) on 0.0.0.0:8000
#                   (HOST/PORT or MOVINET_HOST/MOVINET_PORT choose another address)
#   make test    -> venv + install + the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test install lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[all]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/movinet-service serve --host $${HOST:-$${MOVINET_HOST:-0.0.0.0}} --port $${PORT:-$${MOVINET_PORT:-8000}}

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
