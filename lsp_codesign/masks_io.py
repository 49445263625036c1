"""The block-mask file written by the allocator and read by report, verify and finetune.

``masks.safetensors`` holds one ``uint8`` tensor per pruned linear layer, named after the
module (``blocks.0.attn.qkv``), of shape ``(KB, NB)`` with 1 = kept block. Its metadata:

``format``  ``lsp-codesign-masks/1``
``block``   ``BKxBN``
``model``   model name
``gemms``   JSON ``{layer: [M, N, K]}``: tokens per image the layer sees (1 for the classifier
            head), input features, output features (the weight is ``(K, N)``)
``order``   JSON list of layer names in model order

It is read with ``safetensors.numpy`` (no torch needed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import parse_block
from .errors import LspError
from .packing import BlockGrid, PackingError

__all__ = ["MaskSet", "save_masks", "load_masks", "FORMAT"]

FORMAT = "lsp-codesign-masks/1"
MAX_DIM = 1 << 24  # M, N, K of a recorded GEMM
MAX_LAYERS = 10_000


@dataclass(frozen=True)
class MaskSet:
    """Block masks of a model.

    ``masks[name]`` is the ``(KB, NB)`` bool mask of layer ``name``; ``gemms[name]`` its GEMM
    ``(M, N, K)``.
    """

    model: str
    block_k: int
    block_n: int
    order: tuple[str, ...]
    gemms: dict[str, tuple[int, int, int]]
    masks: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        if len(self.order) > MAX_LAYERS or len(set(self.order)) != len(self.order):
            raise LspError(f"mask set: the layer list has {len(self.order)} names, "
                           f"{len(set(self.order))} distinct (at most {MAX_LAYERS})")
        if set(self.order) != set(self.masks) or set(self.masks) != set(self.gemms):
            raise LspError("mask set: layer names of order, gemms and masks differ")
        for name in self.order:
            g = self.gemms[name]
            if not (isinstance(name, str) and isinstance(g, tuple) and len(g) == 3
                    and all(isinstance(v, int) and not isinstance(v, bool)
                            and 1 <= v <= MAX_DIM for v in g)):
                raise LspError(f"mask set: layer {str(name)[:80]!r}: the GEMM (M, N, K) must be "
                               f"three integers from 1 to {MAX_DIM}, got {str(g)[:80]}")
            m_, n, k = g
            try:
                m = BlockGrid(k, n, self.block_k, self.block_n).check_mask(
                    self.masks[name], what=f"mask of {name}")
            except PackingError as exc:
                raise LspError(str(exc)) from None
            self.masks[name] = m

    @property
    def block(self) -> tuple[int, int]:
        """``(BK, BN)``, as :attr:`lsp_codesign.config.HwConfig.block`."""
        return (self.block_k, self.block_n)

    @property
    def block_str(self) -> str:
        """``"BKxBN"``, as :attr:`lsp_codesign.config.HwConfig.block_str`."""
        return f"{self.block_k}x{self.block_n}"

    @property
    def kept_blocks(self) -> int:
        """Kept blocks over all layers."""
        return sum(int(m.sum()) for m in self.masks.values())

    @property
    def total_blocks(self) -> int:
        """Blocks over all layers."""
        return sum(int(m.size) for m in self.masks.values())


def save_masks(path: str | Path, ms: MaskSet) -> None:
    from safetensors.numpy import save_file

    tensors = {name: np.ascontiguousarray(ms.masks[name].astype(np.uint8)) for name in ms.order}
    meta = {
        "format": FORMAT,
        "block": ms.block_str,
        "model": ms.model,
        "gemms": json.dumps({n: list(ms.gemms[n]) for n in ms.order}),
        "order": json.dumps(list(ms.order)),
    }
    save_file(tensors, str(path), metadata=meta)


def load_masks(path: str | Path) -> MaskSet:
    """Load and validate a mask file; every problem is one :class:`LspError` naming the file."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise LspError(f"{p}: mask file not found")
    try:
        with safe_open(str(p), framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise LspError(f"{p}: not a readable safetensors file ({str(exc)[:160]})") from None
    if meta.get("format") != FORMAT:
        raise LspError(f"{p}: metadata 'format' is {meta.get('format')!r}, expected {FORMAT!r}")
    bk, bn = parse_block(meta.get("block", ""), key="block", where=str(p))
    try:
        gemms = json.loads(meta["gemms"])
        order = json.loads(meta["order"])
        if not (isinstance(gemms, dict) and isinstance(order, list)
                and all(isinstance(n, str) for n in order)
                and all(isinstance(v, list) for v in gemms.values())):
            raise TypeError("'gemms' must map names to [M, N, K] and 'order' list names")
        gemms = {k: tuple(v) for k, v in gemms.items()}
        order = tuple(order)
    except (KeyError, ValueError, TypeError, RecursionError) as exc:
        raise LspError(f"{p}: malformed metadata ({str(exc)[:120]})") from None
    if set(tensors) != set(order):
        missing = sorted(set(order) - set(tensors))
        extra = sorted(set(tensors) - set(order))
        raise LspError(f"{p}: tensors do not match the layer list (missing "
                       f"{str(missing)[:120]}, extra {str(extra)[:120]})")
    try:
        return MaskSet(model=meta.get("model", ""), block_k=bk, block_n=bn, order=order,
                       gemms=gemms, masks=dict(tensors))
    except LspError as exc:
        raise LspError(f"{p}: {exc}") from None
