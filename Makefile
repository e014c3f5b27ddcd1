# From a fresh clone:
#   make serve     install (first time), migrate the SQLite file, serve on http://localhost:6543
#   make test      install (first time), the fast suite: everything but the slow tests
#                  (load, kill, callgrind, browser: marked `slow`, listed in tests/conftest.py)
#   make test-all  the whole suite, slow tests included (what CI runs)
# PostgreSQL: make test DBURL=postgresql://127.0.0.1/test   (the suite then runs on both backends)
#             DATABASE_URL=postgresql://... make serve

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INI ?= development.ini
DBURL ?=
PYTEST_ARGS ?=
# pytest-xdist workers
JOBS ?= 2

.PHONY: serve test test-all lint install clean

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[testing,benchmarks]"
	@touch $@

install: $(BIN)/.installed

serve: $(BIN)/.installed
	$(BIN)/myapp -c $(INI) initdb
	$(BIN)/pserve $(INI)

test: $(BIN)/.installed
	$(BIN)/python -m pytest -n $(JOBS) -m "not slow" $(if $(DBURL),--dburl $(DBURL)) $(PYTEST_ARGS)

test-all: $(BIN)/.installed
	$(BIN)/python -m pytest -n $(JOBS) $(if $(DBURL),--dburl $(DBURL)) $(PYTEST_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) var *.egg-info
