"""The single hardware configuration of lsp-codesign.

A :class:`HwConfig` is loaded once from YAML (a file, or a preset of ``lsp_codesign/presets/``
by name), validated, and frozen. Every value that other parts need (array shape, memory word
widths and depths, address widths, energy per event, the fixed cycle constants of the engine) is
derived here, once. The RTL generator, the cycle/energy model, the compiler, the allocator and
the reports all read this object; none of them re-derives a width, a depth or an energy figure on
its own.

Importing this module does not import torch, amaranth or cocotb.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .config_schema import (ENERGY_KEYS, MEM_KEYS, TOP_KEYS, ConfigError, check_mapping,
                            check_sram_table, parse_block, parse_pair)
from .config_schema import fail as _fail
from .strict_yaml import YamlError, read_yaml

__all__ = [
    "ConfigError",
    "HwConfig",
    "MemorySpec",
    "load_config",
    "parse_block",
    "parse_pair",
    "ENGINES",
    "DATAFLOWS",
]

ENGINES = ("block_sparse", "systolic")
DATAFLOWS = ("os", "ws", "is")
MEMORY_NAMES = ("imem", "xmem", "wmem", "idx", "ymem")

# Fixed data types of the engine: int8 operands, int32 accumulation (wrap-around).
ACT_BITS = 8
WEIGHT_BITS = 8
ACC_BITS = 32
INSN_BITS = 32


def _is_pow2(v: int) -> bool:
    return v > 0 and (v & (v - 1)) == 0


def _clog2(v: int) -> int:
    """Bits needed to address ``v`` entries (at least 1)."""
    return max(1, math.ceil(math.log2(v))) if v > 1 else 1


@dataclass(frozen=True)
class MemorySpec:
    """One on-chip SRAM of the engine, with its derived geometry and energy.

    Attributes
    ----------
    name : str
        ``imem``, ``xmem``, ``wmem``, ``idx`` or ``ymem``.
    word_bits : int
        Width of one word (one access).
    depth : int
        Number of words.
    addr_bits : int
        Address width.
    capacity_kib : float
        ``depth * word_bits / 8 / 1024``.
    access_pj : float
        Energy of one word access (read or write), scaled from the 64-bit figure of an SRAM of
        this capacity.
    """

    name: str
    word_bits: int
    depth: int
    addr_bits: int
    capacity_kib: float
    access_pj: float

    @property
    def word_bytes(self) -> int:
        return self.word_bits // 8

    @property
    def pj_per_byte(self) -> float:
        return self.access_pj / (self.word_bits / 8)


def sram_pj_per_64b(table: Mapping[float, float], capacity_kib: float) -> float:
    """Energy of a 64-bit access to an SRAM of ``capacity_kib``.

    Piecewise linear in log2(capacity) through the table's points; clamped to the first point
    below it and extended along the last segment above it (larger arrays keep getting costlier).
    """
    pts = sorted((float(k), float(v)) for k, v in table.items())
    xs = [math.log2(k) for k, _ in pts]
    ys = [v for _, v in pts]
    x = math.log2(max(capacity_kib, 1e-9))
    if len(pts) == 1 or x <= xs[0]:
        return ys[0]
    for i in range(1, len(xs)):
        if x <= xs[i]:
            t = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
            return ys[i - 1] + t * (ys[i] - ys[i - 1])
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return ys[-1] + slope * (x - xs[-1])


@dataclass(frozen=True)
class HwConfig:
    """Frozen hardware configuration with every derived value computed once.

    Build it with :func:`load_config` (from YAML) or :meth:`from_dict`; change it only through
    :meth:`with_overrides`, which re-validates.

    Parameters are the YAML keys; see ``docs/config.md`` for their meaning. Derived attributes:

    Attributes
    ----------
    block_k, block_n : int
        Pruning block ``BK x BN``: BK rows of W (output features) by BN columns (input features).
    tile_m : int
        Token-tile height BM.
    array_rows, array_cols : int
        PE array shape. For ``block_sparse`` it follows the block (``BK x BN``); for ``systolic``
        it is the configured array.
    memories : dict[str, MemorySpec]
        Geometry and access energy of each SRAM.
    block_step_cycles : int
        ``max(BM, BK)``: one kept block for one token tile (block-sparse engine).
    drain_cycles : int
        ``BM + 1``: writing one output tile row of blocks.
    fill_cycles : int
        ``BK``: the first block's weights, before any compute.
    """

    name: str
    engine: str
    clock_mhz: float
    block_k: int
    block_n: int
    tile_m: int
    array_rows: int
    array_cols: int
    dataflow: str
    index_bits: int
    mem_params: tuple[tuple[str, float], ...]
    mac_pj: float
    sram_table: tuple[tuple[float, float], ...]
    dram_pj_per_64b: float
    static_mw: float
    description: str = ""
    source: str = field(default="", compare=False)
    # derived
    memories: dict = field(init=False, compare=False, repr=False)

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, raw: Any, *, source: str = "") -> "HwConfig":
        """Validate a parsed YAML mapping and build the config."""
        where = source
        if not isinstance(raw, dict):
            raise ConfigError(f"{where or 'config'}: expected a mapping at the top level, "
                              f"got {type(raw).__name__}")
        raw = check_mapping(raw, TOP_KEYS, "", where)
        mems = check_mapping(raw["memories"], MEM_KEYS, "memories.", where)
        energy = check_mapping(raw["energy"], ENERGY_KEYS, "energy.", where)

        engine = raw["engine"]
        if engine not in ENGINES:
            raise _fail(where, "engine", f"expected one of {', '.join(ENGINES)}, got {engine!r}")
        bk, bn = parse_block(raw["block"], where=where)
        if engine == "systolic":
            if "array" not in raw:
                raise _fail(where, "array", "missing required key for engine systolic")
            rows, cols = parse_pair(raw["array"], key="array", where=where)
            dataflow = raw.get("dataflow", "ws")
            if dataflow not in DATAFLOWS:
                raise _fail(where, "dataflow",
                            f"expected one of {', '.join(DATAFLOWS)}, got {dataflow!r}")
        else:
            if "array" in raw:
                raise _fail(where, "array", "the block_sparse engine's array follows the block "
                            f"({bk}x{bn}); remove this key")
            if "dataflow" in raw:
                raise _fail(where, "dataflow", "only the systolic engine has a dataflow; "
                            "remove this key")
            rows, cols = bk, bn
            dataflow = "bs"
        sram_table = check_sram_table(energy["sram_pj_per_64b"], where)
        cfg = cls(
            name=raw["name"],
            engine=engine,
            clock_mhz=float(raw["clock_mhz"]),
            block_k=bk,
            block_n=bn,
            tile_m=raw["tile_m"],
            array_rows=rows,
            array_cols=cols,
            dataflow=dataflow,
            index_bits=raw.get("index_bits", 16),
            mem_params=tuple((k, float(mems[k])) for k in MEM_KEYS),
            mac_pj=float(energy["mac_pj"]),
            sram_table=tuple(sorted(sram_table)),
            dram_pj_per_64b=float(energy["dram_pj_per_64b"]),
            static_mw=float(energy["static_mw"]),
            description=raw.get("description", ""),
            source=source,
        )
        return cfg

    def __post_init__(self) -> None:
        where = self.source
        if self.clock_mhz <= 0:
            raise _fail(where, "clock_mhz", f"must be positive, got {self.clock_mhz:g}")
        if self.tile_m <= 0:
            raise _fail(where, "tile_m", f"must be positive, got {self.tile_m}")
        if self.engine == "block_sparse":
            for key, v in (("block", self.block_k), ("block", self.block_n),
                           ("tile_m", self.tile_m)):
                if not _is_pow2(v) or v < 2:
                    raise _fail(where, key, f"the block_sparse engine needs powers of two >= 2 "
                                f"(address arithmetic is shifts), got {v}")
        else:
            if self.array_rows % self.block_n or self.array_cols % self.block_k:
                raise _fail(where, "block",
                            f"block {self.block_k}x{self.block_n} does not fit the "
                            f"{self.array_rows}x{self.array_cols} array: array rows must be a "
                            f"multiple of BN and array columns a multiple of BK")
        if not 8 <= self.index_bits <= 32:
            raise _fail(where, "index_bits", f"must be between 8 and 32, got {self.index_bits}")
        for k, v in self.mem_params:
            if v <= 0:
                raise _fail(where, f"memories.{k}", f"must be positive, got {v:g}")
        if not self.sram_table:
            raise _fail(where, "energy.sram_pj_per_64b", "needs at least one capacity: pJ entry")
        for cap, pj in self.sram_table:
            if cap <= 0:
                raise _fail(where, "energy.sram_pj_per_64b",
                            f"capacities must be positive KiB, got {cap:g}")
            if pj < 0:
                raise _fail(where, f"energy.sram_pj_per_64b.{cap:g}",
                            f"energy must not be negative, got {pj:g}")
        for key, v in (("energy.mac_pj", self.mac_pj),
                       ("energy.dram_pj_per_64b", self.dram_pj_per_64b),
                       ("energy.static_mw", self.static_mw)):
            if v < 0:
                raise _fail(where, key, f"energy must not be negative, got {v:g}")
        object.__setattr__(self, "memories", self._derive_memories())
        wmem = self.memories["wmem"]
        if self.engine == "block_sparse" and wmem.depth < self.block_k:
            raise _fail(where, "memories.wmem_kib",
                        f"{wmem.capacity_kib:g} KiB cannot hold one {self.block_k}x{self.block_n} "
                        f"block ({self.block_k * self.block_n} bytes)")
        for name in ("xmem", "ymem", "idx"):
            if self.memories[name].depth < 1:
                raise _fail(where, f"memories.{name}_kib",
                            f"too small for one {self.memories[name].word_bits}-bit word")

    def _derive_memories(self) -> dict[str, MemorySpec]:
        p = dict(self.mem_params)
        widths = {
            "imem": INSN_BITS,
            "xmem": self.block_n * ACT_BITS,
            "wmem": self.block_n * WEIGHT_BITS,
            "idx": self.index_bits,
            "ymem": self.block_k * ACC_BITS,
        }
        out = {}
        for name in MEMORY_NAMES:
            w = widths[name]
            if name == "imem":
                depth = int(p["imem_words"])
            else:
                depth = int(p[f"{name}_kib"] * 1024 * 8 // w)
            cap = depth * w / 8 / 1024
            pj64 = sram_pj_per_64b(dict(self.sram_table), cap)
            out[name] = MemorySpec(name=name, word_bits=w, depth=depth,
                                   addr_bits=_clog2(max(depth, 2)), capacity_kib=cap,
                                   access_pj=pj64 * w / 64)
        return out

    # ---- derived values -----------------------------------------------------------------------

    @property
    def block(self) -> tuple[int, int]:
        return (self.block_k, self.block_n)

    @property
    def block_str(self) -> str:
        return f"{self.block_k}x{self.block_n}"

    @property
    def period_ns(self) -> float:
        return 1000.0 / self.clock_mhz

    @property
    def static_pj_per_cycle(self) -> float:
        # mW * ns = pJ
        return self.static_mw * self.period_ns

    @property
    def dram_pj_per_byte(self) -> float:
        return self.dram_pj_per_64b / 8

    @property
    def block_step_cycles(self) -> int:
        return max(self.tile_m, self.block_k)

    @property
    def drain_cycles(self) -> int:
        return self.tile_m + 1

    @property
    def fill_cycles(self) -> int:
        return self.block_k

    @property
    def macs_per_cycle(self) -> int:
        return self.array_rows * self.array_cols

    @property
    def counter_bits(self) -> int:
        return 48

    # ---- overrides, serialisation ------------------------------------------------------------

    def with_overrides(self, *, block: Any = None, array: Any = None, dataflow: str | None = None,
                       tile_m: int | None = None, clock_mhz: float | None = None) -> "HwConfig":
        """A new config with command-line overrides applied and validated again."""
        raw = self.to_dict()
        if block is not None:
            raw["block"] = "%dx%d" % parse_block(block, key="--block")
        if array is not None:
            if self.engine != "systolic":
                raise ConfigError(f"--array: engine {self.engine} has no configurable array "
                                  f"(its array follows the block); use a systolic config")
            raw["array"] = "%dx%d" % parse_pair(array, key="--array")
        if dataflow is not None:
            if self.engine != "systolic":
                raise ConfigError(f"--dataflow: engine {self.engine} has no dataflow option; "
                                  "use a systolic config")
            if dataflow not in DATAFLOWS:
                raise ConfigError(f"--dataflow: expected one of {', '.join(DATAFLOWS)}, "
                                  f"got {dataflow!r}")
            raw["dataflow"] = dataflow
        if tile_m is not None:
            raw["tile_m"] = tile_m
        if clock_mhz is not None:
            raw["clock_mhz"] = clock_mhz
        src = self.source + (" (with overrides)" if self.source else "")
        return HwConfig.from_dict(raw, source=src)

    def to_dict(self) -> dict[str, Any]:
        """The YAML mapping that builds this config (round-trips through :meth:`from_dict`)."""
        d: dict[str, Any] = {"name": self.name}
        if self.description:
            d["description"] = self.description
        d["engine"] = self.engine
        d["clock_mhz"] = self.clock_mhz
        d["block"] = self.block_str
        d["tile_m"] = self.tile_m
        if self.engine == "systolic":
            d["array"] = f"{self.array_rows}x{self.array_cols}"
            d["dataflow"] = self.dataflow
        d["index_bits"] = self.index_bits
        d["memories"] = {k: (int(v) if float(v).is_integer() else v) for k, v in self.mem_params}
        d["energy"] = {
            "mac_pj": self.mac_pj,
            "sram_pj_per_64b": {(int(c) if c.is_integer() else c): p for c, p in self.sram_table},
            "dram_pj_per_64b": self.dram_pj_per_64b,
            "static_mw": self.static_mw,
        }
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def derived(self) -> dict[str, Any]:
        """Every derived value, as plain data (written next to generated RTL as params.json)."""
        return {
            "name": self.name,
            "engine": self.engine,
            "block_k": self.block_k,
            "block_n": self.block_n,
            "tile_m": self.tile_m,
            "array_rows": self.array_rows,
            "array_cols": self.array_cols,
            "dataflow": self.dataflow,
            "index_bits": self.index_bits,
            "clock_mhz": self.clock_mhz,
            "period_ns": self.period_ns,
            "block_step_cycles": self.block_step_cycles,
            "drain_cycles": self.drain_cycles,
            "fill_cycles": self.fill_cycles,
            "counter_bits": self.counter_bits,
            "memories": {n: dataclasses.asdict(m) for n, m in self.memories.items()},
            "energy": {
                "mac_pj": self.mac_pj,
                "dram_pj_per_byte": self.dram_pj_per_byte,
                "static_pj_per_cycle": self.static_pj_per_cycle,
            },
        }

    def config_hash(self) -> str:
        """Short stable hash of everything that shapes the generated hardware."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def load_config(path: str | Path, **overrides: Any) -> HwConfig:
    """Load, validate and freeze a hardware config from a YAML file or a preset's name.

    ``path`` is an existing file, or the name of a shipped preset (``vita``, ``vita.yaml``,
    ``tpu_v3``: :func:`lsp_codesign.presets.resolve_config`). The file is read by :func:`lsp_codesign.strict_yaml.read_yaml` (UTF-8 text, bounded size,
    no aliases, no duplicate keys, ``1e3`` a number). Keyword arguments are passed to
    :meth:`HwConfig.with_overrides` (``block="32x64"``, ...).
    """
    from .presets import resolve_config

    path = resolve_config(path)
    try:
        raw = read_yaml(path, what="config file")
    except YamlError as exc:
        raise ConfigError(str(exc)) from None
    cfg = HwConfig.from_dict(raw, source=str(path))
    if any(v is not None for v in overrides.values()):
        cfg = cfg.with_overrides(**overrides)
    return cfg
