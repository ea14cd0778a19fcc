# cityops — the two set-up commands are `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PORT    ?= 8000
STAMP   := $(VENV)/.installed-stamp
UI_OUT  := src/cityops/web/static/index.html
UI_SRC  := $(wildcard web-ui/package.json web-ui/package-lock.json web-ui/index.html web-ui/vite.config.ts web-ui/src/*)
PYTEST_ARGS ?=

.PHONY: install demo test lint format ui bench clean

$(STAMP): pyproject.toml
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "cityops needs Python 3.11+ (set PY=python3.11)")'
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,postgres]'
	@touch $(STAMP)

install: $(STAMP)

# The web UI is built once (Node 20+); without Node the demo still serves every API.
ui: $(UI_OUT)
$(UI_OUT): $(UI_SRC)
	@if [ ! -f web-ui/package.json ]; then echo "no web-ui/ yet"; \
	elif command -v npm >/dev/null 2>&1; then \
	  cd web-ui && npm ci --no-audit --no-fund --loglevel=error && npm run build; \
	else echo "npm not found: skipping the web UI (install Node 20+ for the map page)"; fi

demo: install ui
	$(BIN)/cityops demo --port $(PORT) $(if $(filter-out 0 false,$(CITYOPS_NO_BROWSER)),--no-browser,)

test: install ui
	$(BIN)/pytest -q $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src/cityops/core

format: install
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

bench: install
	@for f in bench/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) src/cityops/web/static/assets $(UI_OUT) .pytest_cache cityops-demo.db*
