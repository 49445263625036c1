"""Models of a run directory: the wiring between :mod:`lsp_codesign.rundir` and ``models/``.

The core reads a run directory into plain data (:func:`lsp_codesign.rundir.read_run`); here
its model is built from the project's registry, with the run's masks applied.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..masking import apply_masks, element_masks
from ..rundir import ALLOCATION_JSON, Run, RunDirError, read_allocation, read_run

__all__ = ["read_model_run", "dense_model", "pruned_model"]


def read_model_run(run_dir: str | os.PathLike, *, need_hw: bool = False) -> Run:
    """:func:`~lsp_codesign.rundir.read_run`, for a run whose model is registered."""
    from models import list_models

    name = read_allocation(run_dir).model
    if name not in list_models():
        raise RunDirError(f"{Path(run_dir) / ALLOCATION_JSON}: unknown model {name!r}: "
                          "finetune, evaluate and verify support the registered models "
                          f"({', '.join(list_models())})")
    return read_run(run_dir, need_hw=need_hw)


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
