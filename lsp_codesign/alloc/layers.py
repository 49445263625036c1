"""Which linear layers the allocator prunes, and whether the block suits them."""

from __future__ import annotations

import fnmatch
from typing import Iterable, Sequence

from ..flops import ModelCount
from ..packing import BlockGrid
from ..vit_shapes import GemmShape
from .options import AllocError

__all__ = ["select_layers", "check_reachable"]


def select_layers(count: ModelCount, block_k: int, block_n: int,
                  exclude: Iterable[str] = ()) -> tuple[list[GemmShape], list[GemmShape]]:
    """Split a model's linear layers into prunable and excluded ones, checking the block.

    Parameters
    ----------
    count : ModelCount
        The model's layers (:func:`lsp_codesign.flops.count_model`).
    block_k, block_n : int
        The pruning block.
    exclude : iterable of str
        Glob patterns on module names (``head``, ``blocks.11.*``); each must match a layer.

    Returns
    -------
    prunable, excluded : list of GemmShape
        In model order.

    Raises
    ------
    AllocError
        A pattern matches nothing, or a prunable layer is a single block under this block
        size (it could only be kept or removed whole). K or N not a multiple of the block is
        fine: edge blocks are zero padded (``docs/hw.md``, padding rule).
    """
    names = [g.name for g in count.linears]
    excluded: set[str] = set()
    for pat in exclude:
        hit = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if not hit:
            raise AllocError(f"--exclude {pat!r} matches no linear layer of "
                             f"{count.model or 'the model'} (layers: {_few(names)})")
        excluded.update(hit)
    prunable = [g for g in count.linears if g.name not in excluded]
    single = [g for g in prunable if BlockGrid(g.k, g.n, block_k, block_n).n_blocks < 2]
    if single:
        g = single[0]
        more = f" and {len(single) - 1} more ({_few([s.name for s in single[1:]])})" \
            if len(single) > 1 else ""
        raise AllocError(
            f"block {block_k}x{block_n} does not suit layer {g.name} (weight {g.k}x{g.n}){more}: "
            "a layer that is a single block could only be kept or removed whole; use a smaller "
            "--block or --exclude such layers")
    return prunable, [g for g in count.linears if g.name in excluded]


def _few(items: Sequence[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")



def check_reachable(count: ModelCount, prunable: Sequence[GemmShape], r: float) -> None:
    """An :class:`AllocError` when target ``r`` is below what pruning every block reaches."""
    fixed = count.macs - sum(g.m * g.n * g.k for g in prunable)
    lowest = fixed / count.macs
    if r < lowest:
        raise AllocError(
            f"FLOPs target {r:g} is below what pruning can reach for {count.model or 'the model'}"
            f": with every block of every prunable layer pruned it keeps {lowest:.4f} of its "
            "FLOPs (attention products, patch embedding and excluded layers are not pruned)")
