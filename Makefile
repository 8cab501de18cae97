# Every target is idempotent: it creates .venv if missing and (re)installs only when pyproject.toml
# is newer than the install stamp.
.PHONY: install test demo weights

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(VENV)/bin/pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/pytest tests
	WORKBENCH_FAST=1 $(VENV)/bin/pytest --nbmake notebooks

demo: $(STAMP)
	$(VENV)/bin/workbench demo

weights: $(STAMP)
	$(PY) -m workbench.training.all
