# tilpheno: two commands set up a fresh machine.
#   make demo   create .venv, install, run the whole pipeline on sample_fcs/, write reports to demo_out/
#   make test   create .venv if needed, install test extras (and headless Chromium), run pytest
#               on every core (pytest-xdist, one test file per worker at a time)
#   make test-fast  the same without the tests marked slow (the inner loop while developing)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DEMO_OUT ?= demo_out

.PHONY: demo test test-fast venv browser services bench clean

# pytest-xdist: one worker per core (at most 4); --dist loadfile keeps a file's module fixtures on one worker;
# --no-loadscope-reorder hands files out in tests/conftest.py's order (the files holding slow tests first)
PYTEST := $(PY) -m pytest -q -p no:cacheprovider -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# Headless Chromium renders the HTML reports in the browser tests (Debian's package).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = "0" ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: could not install chromium; browser tests will be skipped"; \
	  else echo "warning: chromium not installed and not root; browser tests will be skipped"; fi; }

# The review app's tests: chromium-driver, poppler-utils and a running PostgreSQL (as root; idempotent).
services:
	@bash .ci/review-services.sh

demo: $(STAMP)
	$(VENV)/bin/tilpheno demo --out $(DEMO_OUT)

test: $(STAMP) browser services
	$(PYTEST)

test-fast: $(STAMP) browser services
	$(PYTEST) -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
