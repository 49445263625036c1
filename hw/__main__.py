"""``python -m hw --block 16x16``: generate the engine's Verilog into build/<config-hash>/."""

import sys

from .build import main

sys.exit(main())
