"""cocotb benches of the RTL engine (``docs/rtl.md``).

:mod:`sim.harness` runs compiled layers on Icarus Verilog or Verilator; :mod:`sim.cases` makes
the reference cases; ``python -m sim.make_sim`` (``make sim``) runs them and prints a summary.
Importing this package imports nothing heavy.
"""
