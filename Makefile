# lsp-codesign: the two commands of the README, plus the hardware targets.
#   make demo   set up, then run the main job on the embedded default
#   make test   set up, then run every test (the same command CI runs)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
export AMARANTH_USE_YOSYS := builtin
export HF_HUB_OFFLINE := 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup test demo

setup:
	@./scripts/setup.sh

test: setup
	$(PY) -m pytest -q

demo: setup
	$(BIN)/lsp-codesign report --hw configs/vita.yaml --model deit_tiny_patch16_224
