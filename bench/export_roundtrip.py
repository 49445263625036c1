"""An export round trip: a run's pruned model, exported three ways, loaded as its users would.

For a run directory that ``evaluate`` has scored (``make demo`` leaves ``runs/demo``), this

* exports it with ``lsp-codesign export`` as ``timm``, ``prune`` and ``bsr``;
* loads the timm checkpoint with ``timm.create_model(arch, checkpoint_path=FILE, ...)`` and
  scores it on the same test images as ``evaluate`` (top-1 must equal evaluate.json's);
* applies ``torch.nn.utils.prune.custom_from_mask`` with the prune file's masks to the dense
  model and loads the file into it (outputs must equal the timm model's);
* multiplies with the BSR tensors (each layer's output must match the dense layer's).

Prints a table and writes ``bench/results/export_roundtrip.json``::

    .venv/bin/python bench/export_roundtrip.py runs/demo
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lsp_codesign.table import format_table  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path,
                   default=ROOT / "bench" / "results" / "export_roundtrip.json")
    args = p.parse_args(argv)

    import timm
    import torch
    from safetensors.torch import load_file
    from torch.nn.utils import prune

    from lsp_codesign.commands.export import export_run
    from lsp_codesign.rundir import finetuned_weights, read_run
    from lsp_codesign.training import evaluate_models
    from models import create_model, timm_equivalent
    from models.data import test_loader

    torch.set_num_threads(1)
    run = read_run(args.run_dir)
    rec = json.loads((args.run_dir / "evaluate.json").read_text())
    which = "finetuned" if rec["models"].get("finetuned") else "pruned"
    tmp = Path(tempfile.mkdtemp(prefix="lsp-export-"))
    files = {"timm": tmp / "timm.safetensors", "prune": tmp / "prune.safetensors",
             "bsr": tmp / "bsr.pt"}
    for fmt, path in files.items():
        export_run(args.run_dir, fmt, path)
    arch, kwargs = timm_equivalent(run.model_name)
    loaded = timm.create_model(arch, checkpoint_path=str(files["timm"]), **kwargs).eval()
    n = rec["test_images"]
    res = evaluate_models({"timm": loaded}, test_loader(run.model_name, n, 256), progress=True)

    dense = create_model(run.model_name, finetuned_weights(run))
    sd = load_file(str(files["prune"]))
    mods = dict(dense.named_modules())
    for name in run.masks.order:
        prune.custom_from_mask(mods[name], "weight", sd[f"{name}.weight_mask"])
    dense.load_state_dict(sd)
    images, _ = next(iter(test_loader(run.model_name, 256, 256)))
    with torch.no_grad():
        same = torch.equal(dense(images), loaded(images))
    bsr = torch.load(files["bsr"], weights_only=True)
    worst = 0.0
    for name, layer in bsr["layers"].items():
        w, (k, n_in) = layer["weight"], layer["shape"]
        x = torch.randn(17, w.shape[1])
        ref = x[:, :n_in] @ mods[name].weight.detach().T
        worst = max(worst, float(((w @ x.T).T[:, :k] - ref).abs().max()))
    rows = [[f"evaluate ({which})", f"{100 * rec['models'][which]['top1']:.2f}",
             str(rec["models"][which]["correct"]), "-"],
            ["timm.create_model(checkpoint_path=...)", f"{100 * res['timm']['top1']:.2f}",
             str(res["timm"]["correct"]), "equal" if res["timm"]["correct"] ==
             rec["models"][which]["correct"] else "DIFFERENT"]]
    print(format_table(["model", "top-1 %", "correct", "vs evaluate"], rows))
    print(f"prune form (custom_from_mask + load_state_dict): outputs "
          f"{'identical to' if same else 'DIFFERENT from'} the timm model's on 256 images")
    print(f"bsr: {len(bsr['layers'])} layers, blocksize {tuple(bsr['block'])}, max |W_bsr x - "
          f"W x| = {worst:.2e}")
    sizes = {fmt: path.stat().st_size for fmt, path in files.items()}
    doc = {"run_dir": str(args.run_dir), "model": run.model_name, "which": which,
           "test_images": n, "evaluate_correct": rec["models"][which]["correct"],
           "timm_correct": res["timm"]["correct"], "timm_top1": res["timm"]["top1"],
           "prune_outputs_identical": same, "bsr_max_abs_err": worst, "file_bytes": sizes,
           "load": f"timm.create_model({arch!r}, checkpoint_path=FILE, "
                   + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if res["timm"]["correct"] == rec["models"][which]["correct"] and same else 1


if __name__ == "__main__":
    sys.exit(main())
