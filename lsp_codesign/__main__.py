"""``python -m lsp_codesign``: the command line, as ``lsp-codesign`` (and under ``torchrun -m``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
