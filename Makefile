# The two commands of the README:
#   make run   - set up .venv, then execute every chapter on the built-in data (outputs + figures/)
#   make test  - set up .venv, then run the unit tests and execute every chapter with nbval (fast preset);
#                its figures go to .test-figures/, so figures/ keeps those of make run
#   make exercises - the chapters without their solution cells, outputs cleared, in exercises/ (for a class)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHAPTERS := $(sort $(wildcard notebooks/[0-9][0-9]_*.py))

.PHONY: run test venv clean-venv exercises

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

run: $(STAMP)
	@start=$$(date +%s); for chapter in $(CHAPTERS); do \
	  echo "== executing $$chapter"; t0=$$(date +%s); \
	  $(BIN)/jupytext --quiet --to ipynb --update $$chapter || exit 1; \
	  $(BIN)/jupyter nbconvert --log-level WARN --to notebook --execute --inplace $${chapter%.py}.ipynb || exit 1; \
	  echo "   $$(( $$(date +%s) - t0 )) s"; \
	done; \
	echo; echo "All chapters executed in $$(( $$(date +%s) - start )) s."
	@echo "Executed notebooks (with outputs): notebooks/*.ipynb"
	@echo "Figures:                           figures/*.png"
	@echo "Open them with: $(BIN)/jupyter lab notebooks/"

test: $(STAMP)
	NUCLEILIB_FAST=1 NUCLEILIB_FIGURES=$(CURDIR)/.test-figures MPLBACKEND=Agg $(BIN)/python -m pytest --nbval-lax tests nucleilib notebooks

exercises: $(STAMP)
	$(BIN)/python scripts/make_exercises.py exercises

clean-venv:
	rm -rf $(VENV)
