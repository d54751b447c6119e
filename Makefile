# Two commands do everything on a fresh machine: `make run` and `make test`.
# Each creates the virtual environment in .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; on a GPU cluster install a CUDA build first (see README) and
# `make TORCH_SPEC= run` leaves it alone.
TORCH_SPEC ?= torch==2.13.0
CORES ?= 2

.PHONY: run test test-slow lint slurm-up slurm-down clean-venv

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(if $(TORCH_SPEC),$(BIN)/python -m pip install -q "$(TORCH_SPEC)")
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/snakemake --cores $(CORES)

test: $(BIN)/.installed
	$(BIN)/pytest

test-slow: $(BIN)/.installed
	$(BIN)/pytest -m slow

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check .
	$(BIN)/snakemake --lint
	$(BIN)/lint-imports

# A local single-node Slurm cluster (root; Debian packages installed on first use) for
# `snakemake --profile slurm` and tests/test_slurm.py; state and logs in /tmp/kappadiff-slurm.
slurm-up:
	ci/slurm/up.sh

slurm-down:
	ci/slurm/down.sh

clean-venv:
	rm -rf $(VENV)
