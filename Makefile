# feedserve — the two commands: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

MEMBERS ?= 2000
POSTS ?= 5000
SEED ?= 7

.PHONY: run test lint typecheck unit bench bench-e2e venv data build clean images

venv: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: feedserve needs Python 3.11"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --progress-bar on --upgrade "pip>=24"
	# torch first and pinned: any other version pulls a multi-GB CUDA build
	$(BIN)/python -m pip install --progress-bar on "torch==2.13.0"
	$(BIN)/python -m pip install --progress-bar on -e ".[all]"
	touch $(STAMP)

data: $(STAMP)
	$(BIN)/feedserve demo-data --members $(MEMBERS) --posts $(POSTS) --seed $(SEED) --out var/data

build: data
	$(BIN)/feedserve build --data var/data --out var/artifacts

run: build
	$(BIN)/feedserve up --data var/data --artifacts var/artifacts

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy platform featurizers operators ops tests
	# every model.py is a module named "model": check them one at a time
	for f in model_repo/*/1/model.py; do $(BIN)/mypy "$$f" || exit 1; done

unit: $(STAMP)
	$(BIN)/python -m pytest -m "not integration"

test: lint typecheck
	$(BIN)/python -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(BIN)/python ops/bench/run_all.py

# the end-to-end sweep alone (disaggregated vs monolith) on the built demo data
bench-e2e: build
	$(BIN)/python ops/bench/e2e.py --data var/data --artifacts var/artifacts

# container images (ops/docker/, build context: the repository root), tagged with the package
# version; skipped, with exit status 0, where no Docker engine answers
VERSION := $(or $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' platform/feedserve/__init__.py),0.1.0)
DOCKER_IMAGES := gateway featurizer operator triton

images:
	@if ! command -v docker >/dev/null 2>&1; then \
	  echo "images: skipped: docker is not on PATH"; exit 0; \
	fi; \
	if ! docker info >/dev/null 2>&1; then \
	  echo "images: skipped: no Docker engine answers (docker info failed)"; exit 0; \
	fi; \
	for x in $(DOCKER_IMAGES); do \
	  echo "docker build -f ops/docker/$$x.Dockerfile -t feedserve/$$x:$(VERSION) ."; \
	  docker build -f ops/docker/$$x.Dockerfile -t feedserve/$$x:$(VERSION) \
	    --build-arg VERSION=$(VERSION) . || exit 1; \
	done

clean:
	rm -rf var build *.egg-info .mypy_cache .ruff_cache .pytest_cache
