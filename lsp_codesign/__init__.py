"""lsp-codesign."""
