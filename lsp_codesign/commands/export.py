"""``lsp-codesign export RUN_DIR --format timm|prune|bsr --out FILE``: the pruned model for
other tools.

Wires the run directory (:mod:`lsp_codesign.rundir`: the allocation, masks and finetuned
weights), the run's model (``models/``) and the conversions of :mod:`lsp_codesign.export`;
the file is written whole or not at all (:func:`lsp_codesign.atomic.write_output_file`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..atomic import check_output_file, write_output_file
from ..errors import LspError
from ..export import BSR_FORMAT, EXPORT_FORMATS, bsr_layers, prune_state_dict, timm_state_dict
from ..masking import FinetuneError, check_masked, element_masks
from ..rundir import Run, finetuned_weights
from ._runs import dense_model, read_model_run

ORDER = 70

__all__ = ["register", "run", "export_run", "load_hint"]

SUFFIXES = {"timm": (".safetensors",), "prune": (".safetensors",), "bsr": (".pt", ".pth")}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="write a run's pruned model as a timm checkpoint, prune masks or BSR",
        description="Export the pruned model of RUN_DIR (the finetuned weights when the run has "
                    "them, else its dense checkpoint, with the run's masks). timm: a "
                    "safetensors checkpoint with the pruned blocks zero, for "
                    "timm.create_model(NAME, checkpoint_path=FILE). prune: a safetensors state "
                    "dict in torch.nn.utils.prune form (weight_orig + weight_mask). bsr: a "
                    "torch file (torch.load(weights_only=True)) with one torch.sparse_bsr "
                    "weight per layer, blocksize = the run's block.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by 'allocate'")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS, dest="export_format",
                   help="timm | prune (*.safetensors) | bsr (*.pt)")
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing FILE")
    p.set_defaults(func=run)


def load_hint(run: Run, out: str | Path) -> str:
    """The Python line that loads a ``timm`` export of ``run``."""
    from models import timm_equivalent

    arch, kwargs = timm_equivalent(run.model_name)
    extra = "".join(f", {k}={v!r}" for k, v in kwargs.items())
    return f"timm.create_model({arch!r}, checkpoint_path={str(out)!r}{extra}).eval()"


def _check_out(fmt: str, out: str, overwrite: bool) -> Path:
    path = check_output_file(out, overwrite=overwrite)
    if not path.name.endswith(SUFFIXES[fmt]):
        raise LspError(f"--out {out}: a {fmt} export is written as "
                       f"{' or '.join(SUFFIXES[fmt])}; name the file so")
    return path


def _metadata(run: Run, fmt: str, weights: Path | None) -> dict[str, str]:
    from models import timm_equivalent

    arch, kwargs = timm_equivalent(run.model_name)
    return {"format": "pt", "lsp_export": fmt, "model": run.model_name,
            "timm_model": arch, "timm_kwargs": json.dumps(kwargs, sort_keys=True),
            "block": run.masks.block_str, "allocation_hash": run.allocation_hash,
            "weights": "finetuned" if weights is not None else "dense checkpoint",
            "blocks_kept": f"{run.masks.kept_blocks}/{run.masks.total_blocks}"}


def export_run(run_dir: str | Path, fmt: str, out: str | Path, *,
               overwrite: bool = False) -> dict[str, Any]:
    """Write ``run_dir``'s pruned model to ``out`` in ``fmt``; returns what was written."""
    if fmt not in EXPORT_FORMATS:
        raise LspError(f"--format: expected one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    path = _check_out(fmt, str(out), overwrite)
    run = read_model_run(run_dir)
    weights = finetuned_weights(run)
    model = dense_model(run, weights)  # the run's weights, nothing masked yet
    em = element_masks(model, run.masks)
    if weights is not None:
        try:
            check_masked(model, em)
        except FinetuneError as exc:
            raise FinetuneError(f"{weights}: does not respect the run's masks: {exc}") from None
    meta = _metadata(run, fmt, weights)
    if fmt == "bsr":
        doc = {"format": BSR_FORMAT, "block": [run.masks.block_k, run.masks.block_n],
               "metadata": meta, "layers": bsr_layers(model, run.masks)}

        def write(tmp: Path) -> None:
            import torch

            torch.save(doc, tmp)
    else:
        sd = timm_state_dict(model, em) if fmt == "timm" else prune_state_dict(model, em)

        def write(tmp: Path) -> None:
            from safetensors.torch import save_file

            save_file(sd, str(tmp), metadata=meta)
    write_output_file(path, write, overwrite=overwrite, what=f"{fmt} export")
    return {**meta, "path": str(path), "format": fmt, "model": run.model_name}


def run(args: argparse.Namespace) -> int:
    rec = export_run(args.run_dir, args.export_format, args.out, overwrite=args.overwrite)
    print(f"exported {rec['model']} ({rec['block']} blocks, {rec['blocks_kept']} kept, "
          f"{rec['weights']} weights) as {rec['format']} to {rec['path']}")
    if rec["format"] == "timm":
        run_ = read_model_run(args.run_dir)
        print(f"load it with: import timm; model = {load_hint(run_, rec['path'])}")
    elif rec["format"] == "prune":
        print("load it with: prune.custom_from_mask(layer, 'weight', mask) on each listed layer "
              "of the dense model, then model.load_state_dict(safetensors.torch.load_file(FILE))")
    else:
        print("load it with: torch.load(FILE, weights_only=True)['layers'][NAME]['weight'] "
              "(a torch.sparse_bsr tensor; 'shape' is the unpadded (K, N))")
    return 0
