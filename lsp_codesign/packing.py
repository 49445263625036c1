"""Block-sparse packing of a masked weight, and back.

Conventions (``docs/hw.md``, "Block convention"): a torch ``nn.Linear`` weight ``W`` has shape
``(K, N)`` (K output features, N input features). A pruning block is ``BK x BN``: BK rows by BN
columns of W. The block grid has ``KB = ceil(K / BK)`` block rows and ``NB = ceil(N / BN)`` block
columns; a block mask is a boolean array of shape ``(KB, NB)``, True where the block is kept.

Padding rule: when K or N is not a multiple of the block, the last block row / column is padded
with zeros up to the full block. The padded block is a pruning block like any other (its mask bit
covers its real elements); the padding is never read back as part of the layer.

Packed form (BSR): the kept blocks in row-major block order, a row-pointer array of ``KB + 1``
entries (``row_ptr[i]..row_ptr[i+1]`` are the kept blocks of block row ``i``) and a column-index
array with the block column of each kept block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import LspError

__all__ = ["BlockGrid", "PackedWeight", "pack", "unpack", "expand_mask", "PackingError"]


class PackingError(LspError, ValueError):
    """A weight, mask or block size is inconsistent; the message names which and why."""


@dataclass(frozen=True)
class BlockGrid:
    """Block grid of a ``(K, N)`` weight under a ``BK x BN`` block, with the padding rule."""

    k: int
    n: int
    block_k: int
    block_n: int

    def __post_init__(self) -> None:
        for name, v in (("K", self.k), ("N", self.n), ("block_k", self.block_k),
                        ("block_n", self.block_n)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise PackingError(f"{name} must be a positive integer, got {v!r}")

    @property
    def kb(self) -> int:
        return math.ceil(self.k / self.block_k)

    @property
    def nb(self) -> int:
        return math.ceil(self.n / self.block_n)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.kb, self.nb)

    @property
    def n_blocks(self) -> int:
        return self.kb * self.nb

    @property
    def k_pad(self) -> int:
        return self.kb * self.block_k

    @property
    def n_pad(self) -> int:
        return self.nb * self.block_n

    def block_elements(self) -> np.ndarray:
        """Real (unpadded) elements in each block, shape ``(KB, NB)``."""
        rows = np.full(self.kb, self.block_k)
        rows[-1] = self.k - (self.kb - 1) * self.block_k
        cols = np.full(self.nb, self.block_n)
        cols[-1] = self.n - (self.nb - 1) * self.block_n
        return np.outer(rows, cols)

    def check_mask(self, mask: np.ndarray, what: str = "mask") -> np.ndarray:
        m = np.asarray(mask)
        if m.shape != self.shape:
            raise PackingError(
                f"{what} has shape {tuple(m.shape)}, but a ({self.k}, {self.n}) weight with "
                f"block {self.block_k}x{self.block_n} needs ({self.kb}, {self.nb})")
        if m.dtype != bool:
            if not np.isin(m, (0, 1)).all():
                raise PackingError(f"{what} must hold only 0/1 or booleans")
            m = m.astype(bool)
        return m


def expand_mask(mask: np.ndarray, k: int, n: int, block_k: int, block_n: int) -> np.ndarray:
    """Element mask ``(K, N)`` of a block mask ``(KB, NB)``."""
    g = BlockGrid(k, n, block_k, block_n)
    m = g.check_mask(mask)
    full = np.repeat(np.repeat(m, block_k, axis=0), block_n, axis=1)
    return full[:k, :n]


@dataclass(frozen=True)
class PackedWeight:
    """A block-sparse weight in BSR form.

    Attributes
    ----------
    grid : BlockGrid
        Shape, block and padding.
    blocks : numpy.ndarray
        ``(nnz, BK, BN)``: kept blocks in row-major block order, zero padded at the edges.
    row_ptr : numpy.ndarray
        ``(KB + 1,)`` int64.
    col_idx : numpy.ndarray
        ``(nnz,)`` int64.
    """

    grid: BlockGrid
    blocks: np.ndarray
    row_ptr: np.ndarray
    col_idx: np.ndarray

    @property
    def nnz(self) -> int:
        return int(self.col_idx.shape[0])

    @property
    def mask(self) -> np.ndarray:
        m = np.zeros(self.grid.shape, dtype=bool)
        rows = np.repeat(np.arange(self.grid.kb), np.diff(self.row_ptr))
        m[rows, self.col_idx] = True
        return m

    @property
    def row_nnz(self) -> np.ndarray:
        return np.diff(self.row_ptr)


def pack(weight: np.ndarray, mask: np.ndarray, block_k: int, block_n: int) -> PackedWeight:
    """Pack the kept blocks of ``weight`` (shape ``(K, N)``) selected by ``mask`` (``(KB, NB)``)."""
    w = np.asarray(weight)
    if w.ndim != 2:
        raise PackingError(f"weight must be 2-D (K, N), got shape {tuple(w.shape)}")
    g = BlockGrid(int(w.shape[0]), int(w.shape[1]), int(block_k), int(block_n))
    m = g.check_mask(mask)
    padded = np.zeros((g.k_pad, g.n_pad), dtype=w.dtype)
    padded[: g.k, : g.n] = w
    tiles = padded.reshape(g.kb, g.block_k, g.nb, g.block_n).transpose(0, 2, 1, 3)
    rows, cols = np.nonzero(m)  # row-major order
    blocks = np.ascontiguousarray(tiles[rows, cols])
    row_ptr = np.zeros(g.kb + 1, dtype=np.int64)
    np.cumsum(m.sum(axis=1), out=row_ptr[1:])
    return PackedWeight(grid=g, blocks=blocks, row_ptr=row_ptr, col_idx=cols.astype(np.int64))


def unpack(p: PackedWeight) -> np.ndarray:
    """The dense ``(K, N)`` weight of a packed one (zeros in pruned blocks)."""
    g = p.grid
    if p.row_ptr.shape != (g.kb + 1,) or p.row_ptr[0] != 0 or np.any(np.diff(p.row_ptr) < 0):
        raise PackingError("row_ptr must start at 0, be non-decreasing and have KB + 1 entries")
    if p.row_ptr[-1] != p.nnz or p.blocks.shape != (p.nnz, g.block_k, g.block_n):
        raise PackingError(f"row_ptr ends at {int(p.row_ptr[-1])} but there are {p.nnz} column "
                           f"indices and {p.blocks.shape[0]} blocks")
    if p.nnz and (p.col_idx.min() < 0 or p.col_idx.max() >= g.nb):
        raise PackingError(f"column indices must be in 0..{g.nb - 1}")
    tiles = np.zeros((g.kb, g.nb, g.block_k, g.block_n), dtype=p.blocks.dtype)
    rows = np.repeat(np.arange(g.kb), np.diff(p.row_ptr))
    tiles[rows, p.col_idx] = p.blocks
    dense = tiles.transpose(0, 2, 1, 3).reshape(g.k_pad, g.n_pad)
    return np.ascontiguousarray(dense[: g.k, : g.n])
