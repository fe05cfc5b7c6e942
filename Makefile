# Two commands do all the set-up on a fresh machine with only Python: `make demo`, `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/visiondoctor demo

test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -ra

clean:
	rm -rf $(VENV) runs .pytest_cache
