# The two commands of the README, on a fresh machine with only Python and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Older Airflow lines the `compat` tests also run on, each in its own venv
# under .venv-compat/, pinned by constraints/airflow-<line>.txt.
COMPAT_LINES ?= 2.10.3 2.11.0 3.0.6 3.1.8 3.2.1
# The test modules marked `compat`: only these are collected on older lines,
# so a module written for the newest Airflow is never imported there.
COMPAT_TESTS ?= $(shell grep -lE '^(pytestmark|compat) = .*pytest\.mark\.compat' tests/test_*.py)

.PHONY: venv test e2e e2e-celery demo bench clean test-compat compat-venvs compat-smoke dist

# Installs with uv when it can be had (much faster), else with pip; both
# honour constraints.txt, the versions the suite is known to pass with.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv || true
	if [ -x $(BIN)/uv ] && $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -c constraints.txt -e '.[test,bench]'; then \
		:; \
	else \
		$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,bench]'; \
	fi
	touch $(STAMP)

venv: $(STAMP)

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

e2e: venv
	$(BIN)/python -m pytest -m e2e $(PYTEST_ARGS)

# CeleryExecutor end to end: a Redis broker (redis-server, see .ci/install-redis.sh), a
# PostgreSQL metastore and two workers. Marked `celery`, so `make test` leaves it to this target.
e2e-celery: venv
	$(BIN)/python -m pytest -m celery $(PYTEST_ARGS) tests/test_e2e_celery.py

# The plugin end to end on a stand-in AWS (moto): a good reference, then a broken one.
# `make demo DEMO_ARGS=--keep` keeps its AIRFLOW_HOME and its stand-ins (until Ctrl-C)
# and prints how to use them from another shell.
DEMO_ARGS ?=
demo: venv
	$(BIN)/python -m demo $(DEMO_ARGS)

# The wheel and sdist in dist/, and dist/mwaa/ (plugins.zip + requirements.txt)
# for an Amazon MWAA environment: MWAA_AIRFLOW=2.11.0 for another line.
MWAA_AIRFLOW ?= 2.10.3
dist: venv
	$(BIN)/python scripts/build_dist.py --mwaa-airflow $(MWAA_AIRFLOW)

bench: venv
	$(BIN)/python benchmarks/lookup.py
	$(BIN)/python benchmarks/worker_cache.py
	$(BIN)/python benchmarks/aws_calls.py
	$(BIN)/python benchmarks/task_start.py --runs 7
	$(BIN)/python benchmarks/provider_backend.py
	$(BIN)/python benchmarks/charts.py

# Every line is run even when one fails; the target fails at the end if any
# did. pytest's exit 5 (no test collected) fails a line: nothing was tested.
test-compat:
	@failed=""; \
	for line in $(COMPAT_LINES); do \
		echo "=== Airflow $$line: compat tests"; \
		start=$$(date +%s); \
		if bash .ci/compat-venv.sh $$line; then \
			built=$$(date +%s); \
			AIRFLOW_SM_REFS_COMPAT_LINE=$$line SECRET_IDS_DIFFERENTIAL_EXAMPLES=$${SECRET_IDS_DIFFERENTIAL_EXAMPLES:-15} .venv-compat/$$line/bin/python -m pytest -m "compat and not wallclock" $(PYTEST_ARGS) $(COMPAT_TESTS); \
			rc=$$?; \
			[ $$rc -eq 5 ] && echo "Airflow $$line: pytest collected no compat test"; \
		else \
			built=$$(date +%s); rc=venv; \
		fi; \
		end=$$(date +%s); \
		echo "=== Airflow $$line: $$([ "$$rc" = 0 ] && echo ok || echo "FAILED ($$rc)") in $$((end - start)) s (venv $$((built - start)) s, tests $$((end - built)) s)"; \
		[ "$$rc" = 0 ] || failed="$$failed $$line"; \
	done; \
	if [ -n "$$failed" ]; then echo "test-compat failed on:$$failed"; exit 1; fi; \
	echo "test-compat passed on: $(COMPAT_LINES)"

compat-venvs:
	@for line in $(COMPAT_LINES); do bash .ci/compat-venv.sh $$line || exit 1; done

# airflow version, airflow db migrate and the key imports in each venv.
compat-smoke: compat-venvs
	bash .ci/compat-smoke.sh $(COMPAT_LINES)

clean:
	rm -rf $(VENV) .pytest_cache

# Each core behaviour broken on purpose, one at a time, in a copy of the
# package: a chosen test must fail for each (tests/mutations/run.py). Slow,
# so not part of `make test` or CI.
.PHONY: test-mutations
test-mutations: venv
	$(BIN)/python -m tests.mutations.run
