"""Sub-commands of ``lsp-codesign``, one module each (see :mod:`lsp_codesign.cli`)."""
