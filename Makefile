# `make demo` sets up and runs the main job; `make test` sets up and runs the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out/demo

.PHONY: setup demo test test-torchvision world app bench clean

$(BIN)/unityvideo: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# On CPU machines torch 2.13.0 is installed explicitly (a local CPU wheel); pyproject keeps a
	# range so GPU users keep their own CUDA build.
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev,annotate,train,lora,app]"
	touch $@

setup: $(BIN)/unityvideo

demo: setup
	$(BIN)/unityvideo demo --out $(OUT)

app: setup
	$(BIN)/unityvideo app

world: setup
	$(BIN)/unityvideo world --out out/world --clips 8 --frames 16 --size 128 128 --preview

test: setup
	$(BIN)/python -m pytest -q -n 2

# torchvision (for the RAFT teacher, and diffsynth for the converter's check against the authors'
# base) does not import beside the CPU torch 2.13 wheel; this runs the tests that need it in a second
# venv with torch 2.14.1 + torchvision 0.29.1 (a 5.5 GB CUDA build).
TV_VENV ?= .venv-torchvision
$(TV_VENV)/bin/pytest: pyproject.toml
	$(PY) -m venv $(TV_VENV)
	$(TV_VENV)/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(TV_VENV)/bin/pip install -q -e ".[dev,test-diffsynth]"
	touch $@

test-torchvision: $(TV_VENV)/bin/pytest
	$(TV_VENV)/bin/python -m pytest -q tests/test_annotate.py -k raft
	$(TV_VENV)/bin/python -m pytest -q tests/test_convert.py

bench: setup
	$(BIN)/python benchmarks/world_speed.py

clean:
	rm -rf $(VENV) $(TV_VENV) out
