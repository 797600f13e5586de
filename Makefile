# tfpipe: an Airflow 3 DAG bundle for continuously trained TensorFlow models.
# `make demo` and `make test` are all a new clone needs; each installs what is missing first.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
UV_VERSION := 0.13.8
VENV := .venv
ML_VENV := .venv-ml
UV := $(VENV)/bin/uv
STATE := $(CURDIR)/state

# Everything Airflow keeps (SQLite database, logs, config) lives in ./state, never in $HOME.
export AIRFLOW_HOME := $(STATE)/airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
# Our plugin is an installed package registered by entry point; the plugins folder stays empty.
export AIRFLOW__CORE__PLUGINS_FOLDER := $(STATE)/airflow/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__EXECUTOR := LocalExecutor
# The demo's UI lets everyone in as admin; production keeps authentication on (docs/runbook.md).
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS := True
export TFPIPE_ML_PYTHON := $(CURDIR)/$(ML_VENV)/bin/python
export TFPIPE_PROJECT_ROOT := $(CURDIR)

.PHONY: help install promtool lock landing airflow-init demo airflow tensorboard mlflow serve env test lint format bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

install: $(VENV)/.installed $(ML_VENV)/.installed promtool  ## create both virtual environments (a no-op when nothing changed)

# promtool (Debian's prometheus package) checks the model server's alerting rules in docker/prometheus.
promtool:
	@command -v promtool >/dev/null 2>&1 || apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
		|| { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; } >/dev/null 2>&1 \
		|| echo "promtool could not be installed (apt-get install prometheus): the alert rule test will fail" >&2

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet "uv==$(UV_VERSION)"

# The Airflow runtime: Airflow, providers, Great Expectations, our packages, test tools. No TensorFlow.
# --compile-bytecode: every task and stage is a new process, and where Python may not write .pyc files
# (PYTHONDONTWRITEBYTECODE) each one would compile TensorFlow's and Airflow's sources again (about 5 s each).
$(VENV)/.installed: requirements.lock include/pyproject.toml plugins/pyproject.toml | $(UV)
	$(UV) pip install --quiet --compile-bytecode --python $(VENV)/bin/python -r requirements.lock -e ./include -e ./plugins
	touch $@

# The ML runtime: TensorFlow, TFDV, TFMA, Beam and our library.
$(ML_VENV)/.installed: requirements-ml.lock include/pyproject.toml | $(UV)
	test -x $(ML_VENV)/bin/python || $(PYTHON) -m venv $(ML_VENV)
	$(UV) pip install --quiet --compile-bytecode --python $(ML_VENV)/bin/python -r requirements-ml.lock -e ./include
	touch $@

lock: | $(UV)  ## re-resolve both lock files from requirements*.txt
	$(UV) pip compile --quiet --python-version 3.11 requirements.txt requirements-dev.txt -o requirements.lock
	$(UV) pip compile --quiet --python-version 3.11 requirements-ml.txt requirements-dev.txt -o requirements-ml.lock

landing: $(STATE)/landing/chicago_taxi/.landed  ## split the taxi sample into monthly spans (the landing area)

$(STATE)/landing/chicago_taxi/.landed: data/chicago_taxi/taxi_big_tipper.csv | $(ML_VENV)/.installed
	$(ML_VENV)/bin/python -m tfpipe land-spans --source-uri $< --landing-uri $(STATE)/landing/chicago_taxi >/dev/null
	touch $@

airflow-init: $(AIRFLOW_HOME)/.initialized  ## create the demo's Airflow metadata database (SQLite)

$(AIRFLOW_HOME)/.initialized: $(wildcard dags/configs/*.yaml) | $(VENV)/.installed
	mkdir -p $(AIRFLOW__CORE__PLUGINS_FOLDER)
	$(VENV)/bin/airflow db migrate >/dev/null
	$(VENV)/bin/python -m tfpipe_airflow.pools dags/configs > $(AIRFLOW_HOME)/pools.json
	$(VENV)/bin/airflow pools import $(AIRFLOW_HOME)/pools.json >/dev/null
	touch $@

demo: install landing airflow-init  ## run chicago_taxi_training end to end on the demo span, then print a summary
	$(VENV)/bin/python scripts/demo.py

airflow: install airflow-init  ## open the Airflow UI on the demo's state at http://127.0.0.1:8080
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" airflow standalone

tensorboard: install  ## TensorBoard on every run's training logs at http://localhost:6006 (the tasks' TensorBoard links)
	$(ML_VENV)/bin/tensorboard --logdir "$${TFPIPE_ARTIFACT_ROOT:-$(CURDIR)/state/artifacts}" --host 127.0.0.1 --port 6006

mlflow: install  ## the MLflow UI on the demo's model registry and lineage at http://127.0.0.1:5000
	$(ML_VENV)/bin/mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/state/mlflow/mlflow.db}"

# Try it: curl -s -X POST http://127.0.0.1:8501/v1/models/big_tipper:predict -H 'X-Request-Key: me' \
#   -d '{"instances": [{"fare": 12.5, "trip_miles": 2.1, "trip_seconds": 600, "payment_type": "Credit Card",
#   "company": null, "trip_start_hour": 19, "trip_start_day": 6, "trip_start_month": 5,
#   "pickup_community_area": 8, "dropoff_community_area": 32, "pickup_latitude": 41.9, "pickup_longitude": -87.63,
#   "dropoff_latitude": 41.88, "dropoff_longitude": -87.62}]}'
# (GET .../v1/models/big_tipper/metadata lists the inputs; /metrics, /readyz; admin API: set TFPIPE_SERVING_ADMIN_TOKEN.)
serve: install  ## the model server (TF Serving's REST API) on the demo registry's champion at http://127.0.0.1:8501
	$(ML_VENV)/bin/python -m tfpipe serve --config dags/configs/chicago_taxi.yaml --from-registry champion \
		--host 127.0.0.1 --port 8501

env:  ## print the demo's environment for a shell: eval "$$(make -s env)", then use airflow and python -m tfpipe
	@echo 'export AIRFLOW_HOME=$(AIRFLOW_HOME) AIRFLOW__CORE__DAGS_FOLDER=$(AIRFLOW__CORE__DAGS_FOLDER)'
	@echo 'export AIRFLOW__CORE__PLUGINS_FOLDER=$(AIRFLOW__CORE__PLUGINS_FOLDER) AIRFLOW__CORE__LOAD_EXAMPLES=False'
	@echo 'export AIRFLOW__CORE__EXECUTOR=LocalExecutor AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True'
	@echo 'export TFPIPE_ML_PYTHON=$(TFPIPE_ML_PYTHON) TFPIPE_PROJECT_ROOT=$(TFPIPE_PROJECT_ROOT)'
	@echo 'export PATH=$(CURDIR)/$(VENV)/bin:$$PATH'

test: install lint  ## run every test (unit, DAG integrity, integration)
	$(VENV)/bin/python -m pytest tests/unit/tfpipe_airflow tests/dags tests/integration
	$(ML_VENV)/bin/python -m pytest tests/unit/tfpipe

lint: $(VENV)/.installed  ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed  ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install  ## run the benchmarks (BENCH="dag_parse ..." for some); one JSON object per benchmark
	$(VENV)/bin/python bench/run.py $(BENCH)

clean:  ## remove all local state (Airflow database, logs, landing area, artifacts)
	rm -rf $(STATE)
