# The two commands of the README, on a fresh machine with only Python and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv test e2e demo bench clean

# Installs with uv when it can be had (much faster), else with pip; both
# honour constraints.txt, the versions the suite is known to pass with.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv || true
	if [ -x $(BIN)/uv ] && $(BIN)/uv pip install -q --python $(BIN)/python -c constraints.txt -e '.[test]'; then \
		:; \
	else \
		$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'; \
	fi
	touch $(STAMP)

venv: $(STAMP)

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

e2e: venv
	$(BIN)/python -m pytest -m e2e $(PYTEST_ARGS)

demo: venv
	$(BIN)/python -m demo

bench: venv
	$(BIN)/python benchmarks/lookup.py
	@if [ -f benchmarks/worker_cache.py ]; then $(BIN)/python benchmarks/worker_cache.py; fi

clean:
	rm -rf $(VENV) .pytest_cache
