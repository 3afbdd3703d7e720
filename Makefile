# Two commands for a fresh clone: `make repro` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: repro repair test test-fast venv clean-outputs profile reproduce ui

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# repair first: a kill while DVC rewrote dvc.lock (or .dvc/tmp/rwlock) leaves a file DVC refuses to start from
# the params check first too: on a broken params.yaml DVC's own error names dvc.yaml's matrix, not the key to fix
repro: repair
	$(BIN)/python -m distillery.core.config params.yaml
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

repair: $(STAMP)
	$(BIN)/python -m distillery.core.dvc_state

# Rerun the committed params on a fresh clone (another floating-point path by default) and compare its
# verdicts and intervals with the committed report: reports/reproduced.md. ARGS="--float-path same" keeps the path.
reproduce: $(STAMP)
	$(BIN)/python -m distillery.reproduce $(ARGS)

# MLflow's UI on the project's store; a moved or copied project first points its store at its own mlruns/
ui: $(STAMP)
	$(BIN)/python -m distillery.core.artifact_paths .
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db $(ARGS)

# A whole recipe at once: make profile NAME=photos-small SET="data.path=/my/photos" (profiles/*.yaml)
profile: $(STAMP)
	$(BIN)/python -m distillery.profiles $(NAME) $(SET)

# pytest exits 5 when it collects no tests: treat that as a failure of the suite, not a pass.
# Two workers (pytest-xdist), whole files each: most of the suite's time is processes importing torch and
# waiting on each other, which two cores overlap. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected"; exit 1; fi; exit $$rc

# The tier to run before every commit: no training, no stage process (tests/conftest.py enforces it), two
# workers; under 2 minutes on the 2-core development machine (docs/measurements.md).
test-fast: $(STAMP)
	DISTILLERY_TEST_TIER=fast PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n $(TEST_WORKERS) tests \
		-m "not slow and not engine" -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected"; exit 1; fi; exit $$rc

clean-outputs:
	rm -rf data/prepared models metrics sweeps checkpoints mlflow.db .mlflow.lock mlruns
