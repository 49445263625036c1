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

DEMO_RUN ?= runs/demo

# The co-design loop on the embedded MNIST ViT: allocate block sparsity at half the FLOPs,
# run every pruned layer through the RTL (Verilator), print the hardware report.
demo: setup
	$(BIN)/lsp-codesign allocate --hw configs/vita.yaml --flops 0.5 --out $(DEMO_RUN) --overwrite
	$(BIN)/lsp-codesign verify $(DEMO_RUN)
	$(BIN)/lsp-codesign report $(DEMO_RUN)
