# Two entry points, each doing its own set-up on a fresh machine with Python 3.11+:
#   make run    cycle a short Lorenz-96 case, print the scores, write netCDF and PNGs to out/
#   make test   run the default (fast) test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CASE ?= cases/l96_40_quick.toml

.PHONY: run test test-slow setup clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "enff needs Python 3.11+, found " + sys.version' 
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# Pin torch for the install step only (a CPU wheel is on local disk); the package asks for a range.
	$(BIN)/python -m pip install --quiet "torch==2.13.0" || $(BIN)/python -m pip install --quiet "torch>=2.2"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	# sbibm ships the reference posteriors of the amortized-inference tests; its pinned sbi is old: no deps.
	$(BIN)/python -m pip install --quiet --no-deps "sbibm==1.1.0"
	touch $@

run: setup
	mkdir -p out
	$(BIN)/enff run $(CASE) --out out/l96_40_quick.nc --overwrite
	$(BIN)/enff plot out/l96_40_quick.nc --outdir out

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) out
