# pixelgate's verbs. Every target installs what it needs first (into .venv, cached).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
# Data sets: the developers' offline copies if they are there, else Keras' cache.
DATA_DIR ?= $(if $(wildcard ../shared/datasets),$(abspath ../shared/datasets),$(HOME)/.keras/datasets)
export DATA_DIR
export TF_CPP_MIN_LOG_LEVEL ?= 2
MODEL ?= all
PROFILE ?= full
TRAIN_ARGS ?=
PYTEST_ARGS ?=

.PHONY: install oip-clients serve train test lint bench loadtest docker-build up down clean protos

# The last step writes bytecode for all of site-packages: where PYTHONDONTWRITEBYTECODE is set (as
# on the developers' and CI machines) Python would otherwise compile every module it imports at
# every start (10 of the 18 s an import of TensorFlow took there, half of the gateway's import).
# requirements/oip-clients.txt is .venv-oip's, below: a change there leaves .venv alone.
$(VENV)/.installed: $(filter-out requirements/oip-clients.txt,$(wildcard requirements/*.txt)) \
		client/pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || { $(PY) -m pip --version >/dev/null 2>&1 || $(PY) -m ensurepip >/dev/null; $(PY) -m pip install -q uv==0.13.8; }
	$(UV) pip install -q --python $(PY) -r requirements/dev.txt
	$(UV) pip install -q --python $(PY) --no-deps -r requirements/no-deps.txt
	$(UV) pip install -q --python $(PY) -e ./client
	$(PY) -m compileall -q -j 0 $$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))') >/dev/null
	touch $@

install: $(VENV)/.installed

# The Open Inference Protocol's real clients (tritonclient, kserve) need protobuf<7, the project
# pins 7: their own venv, which tests/test_oip_*.py run client scripts in. Installed with .venv's uv.
OIP_VENV := .venv-oip
$(OIP_VENV)/.installed: requirements/oip-clients.txt | $(VENV)/.installed
	test -x $(OIP_VENV)/bin/python || $(PYTHON) -m venv $(OIP_VENV)
	$(UV) pip install -q --python $(OIP_VENV)/bin/python -r requirements/oip-clients.txt
	touch $@

## oip-clients: the venv with tritonclient and kserve that the Open Inference Protocol tests use
oip-clients: $(OIP_VENV)/.installed

## serve: train quick models that are not exported yet, then run model server (:8500) + gateway (:8000);
##   REPLICAS=2: two model servers (:8500, :8502) behind the gateway
serve: install
	$(PY) -m training train --model all --profile quick --if-missing
	$(PY) -m serving.stack --replicas $(or $(REPLICAS),1)

## train: MODEL=mnist|fashion_mnist|cifar10|all PROFILE=quick|cpu|full [TRAIN_ARGS=--resume];
##   MODEL=<your name> DATA=<folder with a sub-folder of images per class>: a model of your own;
##   STRATEGY=auto|one|mirrored|multiworker (tf.distribute; multiworker reads TF_CONFIG, docs/training.md)
train: install
	$(PY) -m training train --model $(MODEL) --profile $(PROFILE) $(if $(DATA),--data "$(DATA)") \
		$(if $(STRATEGY),--strategy $(STRATEGY)) $(TRAIN_ARGS)

## test: the whole suite (unit, integration with real servers on loopback, load, browser)
test: install oip-clients
	$(PY) -m pytest $(PYTEST_ARGS)

## loadtest: Locust, headless, against HOST (default: a stack at :8000, or one it starts); USERS, SPAWN_RATE,
##   RUN_TIME, LOAD_SHAPE=constant|step, GRPC_TARGET, LOCUST_ARGS; reports/ gets CSV + HTML; fails on a missed SLO;
##   WORKERS=N: Locust's distributed mode, a master and N worker processes (docs/load-testing.md)
loadtest: install
	$(PY) tests/load/run.py $(if $(HOST),--host=$(HOST)) $(if $(GRPC_TARGET),--grpc-target=$(GRPC_TARGET)) \
		$(if $(WORKERS),--workers=$(WORKERS)) \
		$(if $(USERS),--users=$(USERS)) $(if $(SPAWN_RATE),--spawn-rate=$(SPAWN_RATE)) \
		$(if $(RUN_TIME),--run-time=$(RUN_TIME)) $(if $(LOAD_SHAPE),--load-shape=$(LOAD_SHAPE)) $(LOCUST_ARGS)

## lint: ruff, then mypy (strict on client/ and serving/gateway/); both configured in pyproject.toml
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

## protos: regenerate serving/protos/ from the installed tensorflow-serving-api wheel
# MonitoringConfig is compiled with -I serving/config: the file name tests/test_deployment.py gives it.
protos: install
	$(PY) tools/generate_protos.py
	$(PY) -m grpc_tools.protoc -Iserving/config --python_out=serving/config --pyi_out=serving/config \
		serving/config/monitoring_config.proto
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. serving/config/pixelgate_config.proto

## bench: in-process limit, model server (gRPC, with and without batching), gateway and the tutorial
##   Flask app under load, for mnist and cifar10 (trains quick models if none); a few minutes;
##   table to bench-results/ (docs/benchmarks.md). BENCH_ARGS, e.g. "--seconds 2 --models mnist"
bench: install
	nice -n 10 $(PY) -m bench $(BENCH_ARGS)

# Docker (docker/): TF Serving's GPU image + the gateway; DEVICE=cpu for TF Serving's CPU image.
DEVICE ?= gpu
COMPOSE := docker compose -f docker/compose.yaml $(if $(filter cpu,$(DEVICE)),-f docker/compose.cpu.yaml)
.PHONY: docker-train k8s-config

## docker-build: build the gateway and training images
docker-build:
	$(COMPOSE) --profile train build

## up: TF Serving (DEVICE=gpu|cpu) + gateway on :8000 in Docker, serving ./models; waits until healthy
up:
	@ls -d models/*/[0-9]* >/dev/null 2>&1 || { echo "no model versions under models/: run 'make docker-train' (or 'make train') first" >&2; exit 1; }
	@# TF Serving reads models/models.config, which training writes; versions exported before it had none.
	@test -f models/models.config || { echo "models/models.config is missing (models exported before the registry): run '.venv/bin/python -m serving.model_config --models-dir models --add $$(ls -d models/*/[0-9]* | head -1 | cut -d/ -f2)', which lists every exported model" >&2; exit 1; }
	$(COMPOSE) up --detach --build --wait

## down: stop and remove the containers
down:
	$(COMPOSE) --profile train down

## docker-train: MODEL=... PROFILE=... train in the GPU training image; a new version into ./models
docker-train:
	mkdir -p models logs $(DATA_DIR)
	PIXELGATE_UID=$$(id -u) PIXELGATE_GID=$$(id -g) MODEL=$(MODEL) PROFILE=$(PROFILE) \
		$(COMPOSE) --profile train run --rm --build training

## k8s-config: regenerate docker/k8s/tfserving-config.yaml from serving/config/ (needs kubectl)
K8S_TFSERVING_FILES := serving/config/batching_parameters_gpu.txt serving/config/monitoring.config \
	docker/tfserving-ready.sh
k8s-config:
	{ echo "# TF Serving's config files, mounted at /config in the TF Serving pods. Generated by"; \
	  echo "# 'make k8s-config' from $(K8S_TFSERVING_FILES); edit those, not this."; \
	  kubectl create configmap pixelgate-tfserving --dry-run=client -o yaml \
		$(addprefix --from-file=,$(K8S_TFSERVING_FILES)) | grep -v '^  creationTimestamp: null$$'; \
	} > docker/k8s/tfserving-config.yaml

clean:
	rm -rf $(VENV) $(OIP_VENV) .pytest_cache .hypothesis
