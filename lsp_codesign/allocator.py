"""The LSP allocator's public names, importable from one place.

The implementation lives in the :mod:`lsp_codesign.alloc` package: options and defaults
(``options``), numerics (``numerics``), layer selection (``layers``), the calibration pass
(``calibration``), per-layer curves (``curves``), the search (``search``), result types
(``result``) and the end-to-end functions (``pipeline``).
"""

from .alloc import *  # noqa: F401,F403
from .alloc import __all__  # noqa: F401
