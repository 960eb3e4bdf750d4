# Set-up and the two README commands. Everything installs into .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
DEMO_WORKDIR ?= workdirs/demo
DEMO_RULES ?= rec_lra,bp

.PHONY: install test test-fast lint demo data benchmark clean notebooks sync-notebooks

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Tests run in TEST_WORKERS processes (pytest-xdist), each test file in one of them (its
# module fixtures are made once); TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2

PYTEST_ARGS ?=
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest -q $(XDIST) $(PYTEST_ARGS)

# The edit-run loop: everything but the command-line tests marked `slow`.
test-fast: install
	$(PY) -m pytest -q $(XDIST) -m "not slow" $(PYTEST_ARGS)

# The notebooks in smoke mode (synthetic data, a few steps), each in a fresh kernel, and
# each .ipynb against its text twin; sync-notebooks rewrites the .ipynb from the .py.
notebooks: install
	$(PY) -m pytest -q tests/test_notebooks.py

sync-notebooks: install
	$(PY) -m jupytext --to ipynb notebooks/*.py

lint: install
	$(PY) -m ruff check .

# Fashion-MNIST offline: Debian's dataset-fashion-mnist package (apt reaches the
# package registry even where tfds cannot download). Set FMNIST_DIR to use other files.
data:
	@if ls $(FMNIST_DIR)/train-images-idx3-ubyte* >/dev/null 2>&1; then \
	  echo "Fashion-MNIST found in $(FMNIST_DIR)"; \
	elif [ "$(FMNIST_DIR)" = /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then \
	  echo "Installing Debian's dataset-fashion-mnist into $(FMNIST_DIR) ..."; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else \
	  echo "No Fashion-MNIST IDX files in $(FMNIST_DIR). Either run"; \
	  echo "  apt-get install dataset-fashion-mnist   (Debian/Ubuntu)"; \
	  echo "or put the four files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,"; \
	  echo "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in a directory and run"; \
	  echo "  make demo FMNIST_DIR=/that/directory"; \
	  exit 1; \
	fi

# The main job: rec-LRA vs backprop MLPs on Fashion-MNIST, a 20-epoch schedule
# (the full 100-epoch run: BENCHMARKS.md, "MLPs").
demo: install data
	rm -rf $(DEMO_WORKDIR)
	$(PY) -m experiments.compare --config=configs/fmnist_mlp.py:demo \
	  --workdir=$(DEMO_WORKDIR) --rules=$(DEMO_RULES) --config.data.dir=$(FMNIST_DIR)

benchmark: install
	$(PY) -m experiments.benchmark_step --config=configs/fmnist_mlp.py

clean:
	rm -rf $(VENV) workdirs .pytest_cache .ruff_cache *.egg-info
