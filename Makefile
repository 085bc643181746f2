# Two commands set everything up on a fresh machine:
#   make demo   - install, then run the main job on the embedded model (no download)
#   make test   - install, then run the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_FLAGS ?= -q

.PHONY: install demo test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -c constraints-dev.txt -e '.[dev]'
	touch $@

demo: install
	$(VENV)/bin/invedit demo

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

bench: install
	$(PY) benchmarks/edit_speed.py

clean:
	rm -rf $(VENV) .pytest_cache
