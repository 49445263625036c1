"""RTL of the lsp-codesign block-sparse engine, in Amaranth 0.5 (``docs/hw.md``, ``docs/rtl.md``).

The top, :class:`Engine`, takes the :class:`~lsp_codesign.config.HwConfig`; the leaf modules
take plain integers. :func:`build_verilog` writes the Verilog of a config to
``build/<config-hash>/`` with a ``params.json`` beside it, and reuses it while nothing changed.
"""

from .buffers import AccumulatorBank, WeightBuffer
from .build import BuildError, BuildResult, build_verilog
from .counters import PerfCounters
from .decoder import Decoder
from .engine import MEMORY_ORDER, TOP_NAME, Engine
from .memories import SRAM_MODEL_VERILOG, Sram, SramMacroPlatform
from .pe import PE
from .pe_array import PEArray
from .walker import BlockWalker

__all__ = [
    "AccumulatorBank", "BlockWalker", "BuildError", "BuildResult", "Decoder", "Engine",
    "MEMORY_ORDER", "PE", "PEArray", "PerfCounters", "SRAM_MODEL_VERILOG", "Sram",
    "SramMacroPlatform", "TOP_NAME", "WeightBuffer", "build_verilog",
]
