# The two set-up commands of the README. Both create .venv if missing and install into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.visionzoo-installed

.PHONY: test test-extended hub-configs

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 --timeout 900 tests

test-extended: $(STAMP)
	VISIONZOO_EXTENDED_TESTS=1 $(PY) -m pytest -n 2 tests

hub-configs: $(STAMP)
	$(PY) -m visionzoo.hub export hub_configs/
