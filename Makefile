# Every target is idempotent: it creates .venv if missing and (re)installs only when pyproject.toml
# is newer than the install stamp.
.PHONY: install test demo weights lab browser-test screenshots

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Debian's Chromium, driven by Playwright (browser builds cannot be downloaded here, so no `playwright install`)
CHROMIUM ?= $(or $(WORKBENCH_CHROMIUM),/usr/bin/chromium)
# the browser tests fail, not skip, when `make` runs them without Chromium or Playwright
BROWSER_ENV := WORKBENCH_CHROMIUM=$(CHROMIUM) WORKBENCH_REQUIRE_BROWSER=1
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(VENV)/bin/pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/pytest tests
	WORKBENCH_FAST=1 $(VENV)/bin/pytest --nbmake --nbmake-timeout=900 notebooks

demo: $(STAMP)
	$(VENV)/bin/workbench demo

weights: $(STAMP)
	$(PY) -m workbench.training.all

# JupyterLab on the notebooks with this environment's kernel; `WORKBENCH_FAST=1 make lab` for the small sizes.
lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks

$(CHROMIUM):
	$(SUDO) apt-get update
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y chromium

# The notebooks as a person sees them: JupyterLab in headless Chromium, all cells in fast mode (tests/test_browser.py).
browser-test: $(STAMP) | $(CHROMIUM)
	$(BROWSER_ENV) $(VENV)/bin/pytest -m browser tests/test_browser.py

# The README's screenshots (docs/img/): the quickstart's inversion figure and the explorer, from the browser test.
screenshots: $(STAMP) | $(CHROMIUM)
	$(BROWSER_ENV) WORKBENCH_BROWSER_NOTEBOOKS=00_quickstart.ipynb WORKBENCH_SCREENSHOTS=docs/img \
		$(VENV)/bin/pytest -m browser tests/test_browser.py
