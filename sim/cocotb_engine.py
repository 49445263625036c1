"""cocotb test of the engine: run every program of a job file, write the results file.

Started by :func:`sim.harness.run_programs` through ``cocotb_tools.runner`` on Icarus Verilog or
Verilator. The job file (``$LSP_SIM_JOB``) lists the programs with their memory images; the
results file (``$LSP_SIM_RESULTS``) gets one record per program. The checks against numpy and
the cycle/energy model are made by the callers (pytest, ``make sim``), on these records.

A program whose ``done`` does not rise within its watchdog limit fails the test (the results
file says which), instead of hanging the simulator.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cocotb

from sim.tb import EngineTB


@cocotb.test()
async def run_job(dut) -> None:
    """Run the job's programs one after the other on one engine."""
    job = json.loads(Path(os.environ["LSP_SIM_JOB"]).read_text())
    out = Path(os.environ["LSP_SIM_RESULTS"])
    tb = EngineTB(dut, job)
    await tb.reset()
    results = []
    stuck = None
    try:
        for n, prog in enumerate(job["programs"], 1):
            rec = await tb.run_program(prog)
            results.append(rec)
            if job.get("progress_file"):
                state = "WATCHDOG" if rec["watchdog"] else f"{rec['sim_cycles']} cycles"
                with open(job["progress_file"], "a") as fh:
                    fh.write(f"[rtl {job['sim']}] {n}/{len(job['programs'])} {prog['name']}: "
                             f"{state} in {rec['wall_s']:.2f} s\n")
            if rec["watchdog"]:
                stuck = rec
                break
    finally:
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results))
        os.replace(tmp, out)
    assert stuck is None, (f"watchdog: {stuck['name']} did not raise done within "
                           f"{stuck['sim_cycles']} cycles")
