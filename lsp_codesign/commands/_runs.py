"""Models of a run directory: the wiring between :mod:`lsp_codesign.rundir` and ``models/``.

The core reads a run directory into plain data (:func:`lsp_codesign.rundir.read_run`); here
its model is built from the project's registry, with the run's masks applied.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import HwConfig
from ..masking import apply_masks, element_masks
from ..rundir import ALLOCATION_JSON, Run, RunDirError, read_allocation, read_run

__all__ = ["read_model_run", "dense_model", "pruned_model", "note_hw_override"]


def read_model_run(run_dir: str | os.PathLike, *, hw: HwConfig | None = None) -> Run:
    """:func:`~lsp_codesign.rundir.read_run`, for a run whose model is registered."""
    from models import list_models

    name = read_allocation(run_dir).model
    if name not in list_models():
        raise RunDirError(f"{Path(run_dir) / ALLOCATION_JSON}: unknown model {name!r}: "
                          "finetune, evaluate and verify support the registered models "
                          f"({', '.join(list_models())})")
    return read_run(run_dir, hw=hw)


def dense_model(run: Run, weights: str | os.PathLike | None = None) -> Any:
    """The run's model (eval mode) with ``weights``, by default the run's dense checkpoint."""
    from models import create_model

    return create_model(run.model_name, weights if weights is not None else run.checkpoint)


def pruned_model(run: Run, weights: str | os.PathLike | None = None) -> tuple[Any, dict]:
    """The run's model with its masks applied, and its element masks."""
    model = dense_model(run, weights)
    em = element_masks(model, run.masks)
    apply_masks(model, em)
    return model, em


def note_hw_override(command: str, run: Run) -> None:
    """Say on stderr that ``run`` is being used with a config other than its own ``hw.yaml``."""
    import sys

    if run.hw_overridden:
        print(f"lsp-codesign {command}: note: using {run.hw.source or 'the given config'} "
              f"(config hash {run.hw_hash}), not the run's hw.yaml (hash "
              f"{run.allocation.hw_hash}) that priced the allocation", file=sys.stderr)
