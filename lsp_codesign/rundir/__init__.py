"""The run directory: the one package that reads and writes it.

``lsp-codesign allocate`` creates a run directory; the other commands read it and add their
results. Every file name, every JSON key and the format version live here::

    allocation.json        the allocation (FORMAT): model, checkpoint, method, target, block,
                           seed, beta/lambda, per-layer results, the hw config's hash, the
                           arguments, and the allocation's own hash (allocation_hash)
    masks.safetensors      block masks (lsp_codesign.masks_io)
    hw.yaml                the hardware config the allocation was priced with
    curves.npz             per-layer distortion curves, slopes, energy, FLOPs
    plots/                 the allocation's plots (lsp_codesign.plots_alloc)
    verify.json            `verify`: per-layer RTL/ISS counters and verdicts
    finetuned.safetensors  `finetune`: the finetuned weights
    finetune.json          `finetune`: its settings and history
    evaluate.json          `evaluate`: top-1 and KL of the dense, pruned and finetuned models
    report/                `report`: report.md, report.json and plots

**Integrity.** ``allocation_hash`` covers ``allocation.json`` and the bytes of
``masks.safetensors``; ``hw.config_hash`` the config in ``hw.yaml``. :func:`read_run` checks
both, so an edited allocation, masks file or config is refused (a different config only when
the caller passes one explicitly, and then :attr:`Run.hw_overridden` says so). Results written
later record the hashes they were computed from; a stale ``verify.json`` or a finetuned model
of another allocation is detected.

**Writers.** A run directory is built whole under a temporary name (:func:`new_run`); every
later file is replaced atomically under the run's lock (:mod:`lsp_codesign.atomic`), so two
commands never interleave their writes to one run.

Readers return typed objects (:class:`Run`, :class:`AllocationRecord`, :class:`VerifyRecord`);
every problem is one :class:`RunDirError` naming the file and the field.
"""

from .read import (file_stamp, finetuned_weights, is_run_dir, read_allocation, read_run,
                   read_verify)
from .records import (ALLOCATION_JSON, CURVES, EVALUATE_JSON, FINETUNE_JSON, FINETUNED, FORMAT,
                      HW_YAML, MASKS, PLOTS, REPORT_DIR, VERIFY_JSON, AllocationRecord, Run,
                      RunDirError, VerifiedLayer, VerifyRecord, write_json)
from .write import (allocation_document, new_run, run_lock, weights_stamp, write_allocation,
                    write_evaluate, write_finetune, write_report, write_run, write_run_files,
                    write_run_report, write_verify)

__all__ = [
    "FORMAT", "ALLOCATION_JSON", "MASKS", "HW_YAML", "CURVES", "PLOTS", "VERIFY_JSON",
    "FINETUNED", "FINETUNE_JSON", "EVALUATE_JSON", "REPORT_DIR",
    "RunDirError", "AllocationRecord", "Run", "VerifiedLayer", "VerifyRecord",
    "read_run", "read_allocation", "read_verify", "finetuned_weights", "is_run_dir",
    "file_stamp", "new_run", "write_run", "write_run_files", "allocation_document",
    "write_allocation", "run_lock", "weights_stamp", "write_verify", "write_finetune",
    "write_evaluate", "write_report", "write_run_report", "write_json",
]
