# The two commands: `make demo` runs the live demo, `make test` runs every test.
# Each sets up its own virtual environment in .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lab lint setup browser s3rver clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,lab]'
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/c360 demo

# Debian's chromium drives the browser tests; no browser is downloaded.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

# s3rver (npm) is the local S3 server behind the durable-broker test (tests/test_broker_restart.py
# installs it too when it is missing); it goes into the venv, so `make clean` removes it.
s3rver: setup
	@test -x $(VENV)/s3rver/node_modules/.bin/s3rver || { command -v npm >/dev/null 2>&1 && \
	  npm install --silent --no-audit --no-fund --prefix $(VENV)/s3rver s3rver@3.7.1; } || \
	  echo "npm not found: the durable-broker test will try to install s3rver itself"

test: setup browser s3rver
	$(BIN)/ruff check c360 dataflows dashboards tests benchmarks notebooks/builders
	$(BIN)/python -m pytest -ra --durations=15 --nbval-lax tests notebooks

# JupyterLab refuses to start as root (as in many containers) unless told it may.
LAB_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root)
lab: setup
	$(BIN)/jupyter lab notebooks/ $(LAB_ARGS)

clean:
	rm -rf $(VENV) artifacts .pytest_cache
