"""The one error type the command line turns into a single line and a non-zero exit."""

from __future__ import annotations

__all__ = ["LspError"]


class LspError(Exception):
    """A user-facing error: bad input, a file that cannot be used, a mismatch found.

    The message names the field, file or value at fault. ``lsp-codesign`` prints it on one line
    and exits with status 2 (1 for a verification mismatch); library callers can catch it.
    """

    exit_code = 2
