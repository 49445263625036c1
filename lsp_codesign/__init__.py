"""lsp-codesign: hardware/software co-design for block-sparse Vision Transformers.

The public API below is importable without torch, amaranth or cocotb.
"""

from .config import ConfigError, HwConfig, load_config
from .cycle_model import LayerEstimate, estimate_layer, layer_curves, p_m_pj
from .errors import LspError

__version__ = "0.1.0"

__all__ = [
    "__version__", "ConfigError", "HwConfig", "load_config", "LayerEstimate", "estimate_layer",
    "layer_curves", "p_m_pj", "LspError",
]
