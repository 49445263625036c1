"""Content hashes: of plain data, of a model's weights, of a mask set.

A sweep keys every cached result by a hash of everything it depends on, and the ranks of a
sharded calibration compare a hash of what each of them is about to compute. Both use these
functions, so that two processes (or two machines) that hold the same things compute the same
hash, and any difference in the inputs changes it.

* :func:`digest`: canonical JSON (sorted keys, no spaces; numpy scalars and arrays as plain
  numbers) hashed with SHA-256.
* :func:`weights_digest`: every tensor of a torch module's ``state_dict``, in name order, with
  its name, dtype and shape, hashed byte for byte (BLAKE2b). The same weights give the same
  hash on any device; one changed bit changes it.
* :func:`masks_digest`: a :class:`~lsp_codesign.masks_io.MaskSet`'s block and every layer's
  name, GEMM shape and mask.

torch is imported inside :func:`weights_digest` only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from .rundir.records import plain_json

__all__ = ["digest", "weights_digest", "masks_digest", "file_digest"]

DIGEST_CHARS = 20


def _plain(o: Any) -> Any:
    """numpy scalars and arrays, paths (as JSON does in a run directory) and sets, sorted."""
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    return plain_json(o)


def digest(data: Any, chars: int = DIGEST_CHARS) -> str:
    """SHA-256 of the canonical JSON of ``data`` (hex, ``chars`` characters)."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=_plain,
                      allow_nan=True).encode()
    return hashlib.sha256(blob).hexdigest()[:chars]


def weights_digest(model: Any, chars: int = DIGEST_CHARS) -> str:
    """BLAKE2b of every tensor of ``model.state_dict()`` (names, dtypes, shapes and bytes)."""
    import torch

    h = hashlib.blake2b(digest_size=32)
    state = model.state_dict()
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:chars]


def masks_digest(masks: Any, chars: int = DIGEST_CHARS) -> str:
    """Hash of a mask set: block, and per layer (model order) name, GEMM and mask bits."""
    h = hashlib.sha256(f"{masks.block_k}x{masks.block_n}\0".encode())
    for name in masks.order:
        m = np.ascontiguousarray(np.asarray(masks.masks[name], dtype=np.uint8))
        h.update(f"{name}|{tuple(masks.gemms[name])}|{m.shape}\0".encode())
        h.update(m.tobytes())
    return h.hexdigest()[:chars]


def file_digest(path: str | Path, chars: int = DIGEST_CHARS) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for piece in iter(lambda: fh.read(1 << 20), b""):
            h.update(piece)
    return h.hexdigest()[:chars]
