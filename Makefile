# Two commands for a fresh machine (Python 3.11 needed; everything else is installed):
#   make run    the main job on UCI Online Retail, read from the data folder
#               (../shared/data, or TFREC_DATA=DIR make run; downloaded into it on
#               first use when missing; see README, Data)
#   make test   the linter (flake8), then the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test,baselines]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/tfrec prepare --out runs/data   # the run config train reads (the bundled one)
	$(VENV)/bin/tfrec train --run-dir runs/main --overwrite
	$(VENV)/bin/tfrec export --run runs/main --model-dir saved_models/retail

# Test files run in parallel (pytest-xdist), a file's tests in one worker (they share
# its fixtures); plain `pytest` runs them one after another.
test: lint
	$(VENV)/bin/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/python -m flake8 tfrec tests bench examples

bench: $(STAMP)
	$(VENV)/bin/python bench/pairs.py

clean:
	rm -rf $(VENV) runs build *.egg-info
