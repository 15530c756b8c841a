# The two commands: `make demo` runs the live demo, `make test` runs every test.
# Each sets up its own virtual environment in .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lab lint setup browser s3rver clean lock

# Every package comes at the version in constraints.txt (what CI tested), not the newest.
$(BIN)/.installed: pyproject.toml constraints.txt
	@echo "c360: setting up $(VENV) from constraints.txt (about 2-3 minutes the first time)..."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check pip==26.3
	$(BIN)/python -m pip install --quiet --progress-bar off -c constraints.txt -e '.[test,lab]'
	@echo "c360: $(VENV) is ready"
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
	$(BIN)/mypy
	# Two workers, each file on one (module fixtures, a notebook's kernel): most tests wait
	# on a broker, a browser or an idle timeout, not on a core.
	$(BIN)/python -m pytest -ra --durations=15 -n 2 --dist loadfile --nbval-lax tests notebooks

# JupyterLab refuses to start as root (as in many containers) unless told it may.
LAB_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root)
lab: setup
	$(BIN)/jupyter lab notebooks/ $(LAB_ARGS)

# After changing dependencies in pyproject.toml: resolve afresh and pin the result.
lock:
	rm -rf /tmp/c360-lock && $(PYTHON) -m venv /tmp/c360-lock
	/tmp/c360-lock/bin/python -m pip install --quiet pip==26.3 && /tmp/c360-lock/bin/pip install --quiet -e '.[test,lab]'
	{ sed -n 1,2p constraints.txt; /tmp/c360-lock/bin/pip freeze --exclude-editable; } > constraints.new && mv constraints.new constraints.txt

clean:
	rm -rf $(VENV) artifacts .pytest_cache .mypy_cache
