# lsp-codesign: the two commands of the README, plus the hardware targets.
#   make demo   set up, then run the main job on the embedded default
#   make test   set up, then run every test (the same command CI runs)
SHELL := /bin/bash
VENV ?= .venv
DEMO_RUN ?= runs/demo
# Values a user may set (VENV, DEMO_RUN, BLOCK, SIM, WAVES, HW_CONFIG) reach the recipes as environment
# variables ("$$VENV"), never as text pasted into a shell line, so no value can run a command.
export VENV DEMO_RUN
PY := "$$VENV/bin/python"
BIN := "$$VENV/bin"
export AMARANTH_USE_YOSYS := builtin
export HF_HUB_OFFLINE := 1
export PATH := $(abspath $(VENV)/bin):$(PATH)

.PHONY: setup test demo

setup:
	@./scripts/setup.sh

test: setup
	$(PY) -m pytest -q

# The co-design loop on the embedded MNIST ViT: allocate block sparsity at half the FLOPs,
# run every pruned layer through the RTL (Verilator), print the hardware report, then finetune
# with the masks fixed and evaluate dense / pruned / finetuned top-1.
demo: setup
	$(BIN)/lsp-codesign allocate --hw vita --flops 0.5 --out "$$DEMO_RUN" --overwrite
	$(BIN)/lsp-codesign verify "$$DEMO_RUN"
	$(BIN)/lsp-codesign report "$$DEMO_RUN"
	$(BIN)/lsp-codesign finetune "$$DEMO_RUN" --overwrite
	$(BIN)/lsp-codesign evaluate "$$DEMO_RUN"

# ---- RTL: the Amaranth engine (hw/) and its cocotb benches (sim/), see docs/rtl.md ----------
#   make sim BLOCK=16x16 [SIM=icarus|verilator] [WAVES=1]
#                                                  generate the Verilog, run the benches, summary
#                                                  (WAVES=1: a waveform in build/<hash>/waves/)
#   make rtl BLOCK=16x32                           only generate build/<config-hash>/ (Verilog)
#   make rtl-speed                                 bench/rtl_speed.py (cycles/s, both simulators)
#   make area BLOCK=16x16                          yosys: cells, flip-flops, transistors, area
BLOCK ?= 16x16
SIM ?= icarus
WAVES ?= 0
HW_CONFIG ?= vita
export BLOCK SIM HW_CONFIG

.PHONY: sim rtl rtl-speed area mutation

sim: export WAVES := $(WAVES)
sim: setup
	$(PY) -m sim.make_sim --config "$$HW_CONFIG" --block "$$BLOCK" --sim "$$SIM" --waves "$$WAVES"

rtl: setup
	$(PY) -m hw --config "$$HW_CONFIG" --block "$$BLOCK"

rtl-speed: setup
	nice -n 5 $(PY) bench/rtl_speed.py

area: setup
	$(BIN)/lsp-codesign area --hw "$$HW_CONFIG" --block "$$BLOCK"

# Mutation testing of the core (mutmut, [tool.mutmut] in pyproject.toml): every mutant, many hours
# on 2 cores (docs/reliability.md runs a sample); then the score per module (bench/results/mutation.json)
mutation: setup
	CI=true $(BIN)/mutmut run --max-children "$$(nproc)"
	$(PY) bench/mutation_score.py
