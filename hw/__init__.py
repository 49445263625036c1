"""RTL of the lsp-codesign block-sparse engine, in Amaranth 0.5 (``docs/hw.md``, ``docs/rtl.md``).

The top, :class:`Engine`, takes the :class:`~lsp_codesign.config.HwConfig`; the leaf modules
take plain integers. :func:`build_verilog` writes the Verilog of a config to
``build/<config-hash>/`` with a ``params.json`` beside it, and reuses it while nothing changed.
"""

from .buffers import AccumulatorBanks, WeightBuffer
from .build import BuildError, BuildResult, build_verilog
from .compute import TileCompute
from .counters import PerfCounters
from .decoder import Decoder
from .dma import Dma
from .engine import TOP_NAME, Engine, bank_name
from .memories import SRAM_MODEL_VERILOG, Sram, SramMacroPlatform
from .pe import PE
from .pe_array import PEArray
from .sequencer import Sequencer

__all__ = [
    "AccumulatorBanks", "BuildError", "BuildResult", "Decoder", "Dma", "Engine", "PE", "PEArray",
    "PerfCounters", "SRAM_MODEL_VERILOG", "Sequencer", "Sram", "SramMacroPlatform", "TOP_NAME",
    "TileCompute", "WeightBuffer", "bank_name", "build_verilog",
]
