"""The grid of a sweep: configs x blocks x token tiles x FLOPs targets x methods.

Every axis is a list given on the command line (``--blocks 8x8,16x16``); the grid is their
product, in that order, and each element is a :class:`Point`. Building the grid checks every
value before anything runs: an empty axis, a value listed twice, a target outside (0, 1], an
unknown method, and a block or tile that a config refuses are each one error naming the
option and the value. :func:`check_grid_on_model` adds the checks that need the model: a
block that cannot tile one of its layers, a target below what pruning can reach.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence, TypeVar

from ..alloc.layers import check_reachable, select_layers
from ..alloc.options import AllocError, Method, check_flops_target
from ..config import ConfigError, HwConfig, load_config
from ..config_schema import parse_block
from ..errors import LspError
from ..flops import ModelCount

__all__ = ["SweepError", "Point", "Grid", "build_grid", "parse_list", "check_grid_on_model"]

T = TypeVar("T")


class SweepError(LspError):
    """A sweep that cannot run as asked (an empty or contradictory grid, a bad SWEEP_DIR)."""


@dataclass(frozen=True)
class Point:
    """One design point: a config (with its block and tile applied), a target, a method.

    Attributes
    ----------
    config : HwConfig
        The config of ``--hw`` with the point's block and ``tile_m``.
    hw_path : str
        The ``--hw`` file it came from.
    target : float
        FLOPs target R.
    method : str
        Allocation method.
    """

    config: HwConfig
    hw_path: str
    target: float
    method: str

    @property
    def block(self) -> str:
        return self.config.block_str

    @property
    def tile_m(self) -> int:
        return self.config.tile_m

    @property
    def label(self) -> str:
        """A short name: config, block, tile, target and method."""
        return (f"{self.config.name} {self.block} t{self.tile_m} R{self.target:g} "
                f"{self.method}")


@dataclass(frozen=True)
class Grid:
    """The checked axes of a sweep; :meth:`points` is their product."""

    configs: tuple[tuple[str, HwConfig], ...]
    blocks: tuple[str | None, ...]
    tiles: tuple[int | None, ...]
    targets: tuple[float, ...]
    methods: tuple[str, ...]

    def configs_of_points(self) -> list[tuple[str, HwConfig]]:
        """Every (hw file, config with block and tile) in grid order."""
        out = []
        for path, base in self.configs:
            for b in self.blocks:
                for t in self.tiles:
                    out.append((path, _override(path, base, b, t)))
        return out

    def points(self) -> list[Point]:
        return [Point(config=cfg, hw_path=path, target=r, method=m)
                for path, cfg in self.configs_of_points()
                for r in self.targets for m in self.methods]

    def block_sizes(self) -> list[tuple[int, int]]:
        """The distinct blocks of the grid, in order (one calibration each)."""
        seen: dict[tuple[int, int], None] = {}
        for _path, cfg in self.configs_of_points():
            seen.setdefault(cfg.block, None)
        return list(seen)


def parse_list(text: str | Sequence[str], option: str, item: Callable[[str], T]) -> tuple[T, ...]:
    """A comma-separated list (or several, from a repeated option), each item parsed.

    Refused: no items, an item that does not parse (the message names ``option`` and the
    item), an item listed twice.
    """
    parts = [p.strip() for t in ([text] if isinstance(text, str) else text)
             for p in str(t).split(",")]
    if not any(parts):
        raise SweepError(f"{option}: empty list; give at least one value")
    out: list[T] = []
    for p in parts:
        if not p:
            raise SweepError(f"{option}: empty item in {','.join(parts)!r}")
        try:
            v = item(p)
        except (LspError, ValueError) as exc:
            raise SweepError(f"{option}: {p!r}: {_reason(exc)}") from None
        if v in out:
            raise SweepError(f"{option}: {p!r} is listed twice")
        out.append(v)
    return tuple(out)


def _reason(exc: Exception) -> str:
    """The message without its location prefix (``file (with overrides): key: ...``)."""
    text = str(exc)
    for sep in (" (with overrides): ", "--block: "):
        if sep in text:
            text = text.split(sep, 1)[1]
    return text


def _target(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ValueError("not a number; a FLOPs target is a fraction in (0, 1]") from None
    if not math.isfinite(v):
        raise ValueError("a FLOPs target must be a finite number in (0, 1]")
    return check_flops_target(v)


def _block(text: str) -> str:
    return "%dx%d" % parse_block(text, key="--blocks")


def _tile(text: str) -> int:
    try:
        v = int(text, 10)
    except ValueError:
        raise ValueError("not an integer; a token tile is a positive integer") from None
    if v < 1:
        raise ValueError(f"a token tile must be a positive integer, got {v}")
    return v


def _method(text: str) -> str:
    return Method.parse(text, "method").value


def _override(path: str, cfg: HwConfig, block: str | None, tile: int | None) -> HwConfig:
    if block is None and tile is None:
        return cfg
    try:
        return cfg.with_overrides(block=block, tile_m=tile)
    except ConfigError as exc:
        what = " ".join(filter(None, [block and f"--blocks {block}",
                                      tile and f"--tile-m {tile}"]))
        raise SweepError(f"{what} on --hw {path}: {_reason(exc)}") from None


def build_grid(hw_paths: Sequence[str], blocks: str | None, flops: str, methods: str,
               tiles: str | None) -> Grid:
    """Load the configs and check every axis; see the module docstring.

    ``blocks`` or ``tiles`` None: each config keeps its own.
    """
    if not hw_paths:
        raise SweepError("--hw: give at least one hardware config")
    configs = []
    for path in hw_paths:
        if path in [p for p, _ in configs]:
            raise SweepError(f"--hw: {path!r} is listed twice")
        configs.append((path, load_config(path)))
    grid = Grid(configs=tuple(configs),
                blocks=(None,) if blocks is None else parse_list(blocks, "--blocks", _block),
                tiles=(None,) if tiles is None else parse_list(tiles, "--tile-m", _tile),
                targets=parse_list(flops, "--flops", _target),
                methods=parse_list(methods, "--methods", _method))
    seen: dict[str, str] = {}
    for path, cfg in grid.configs_of_points():
        key = cfg.config_hash()
        if key in seen:
            raise SweepError(f"--hw {path} and {seen[key]} give the same config "
                             f"({cfg.name}, block {cfg.block_str}, tile_m {cfg.tile_m}, hash "
                             f"{key}); list it once")
        seen[key] = path
    return grid


def check_grid_on_model(grid: Grid, count: ModelCount, exclude: Iterable[str] = ()) -> None:
    """Every block must tile the model's prunable layers, every target be reachable with it."""
    excl = list(exclude)
    for bk, bn in grid.block_sizes():
        try:
            prunable, _ = select_layers(count, bk, bn, excl)
        except AllocError as exc:
            raise SweepError(f"--blocks: {exc}") from None
        for r in grid.targets:
            try:
                check_reachable(count, prunable, r)
            except AllocError as exc:
                raise SweepError(f"--flops {r:g} with block {bk}x{bn}: {exc}") from None
