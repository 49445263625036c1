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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .config_schema import (DRAM_KEYS, ENERGY_KEYS, MEM_KEYS, TOP_KEYS, ConfigError,
                            check_mapping, check_sram_table, parse_block, parse_pair)
from .config_schema import fail as _fail
from .hwspec import (ACC_BITS, ACT_BITS, INSN_BITS, MEMORIES, WEIGHT_BITS, Dataflow, DramSpec,
                     Engine, MemorySpec, check_bounds, derive_memories, sram_pj_per_64b)
from .strict_yaml import YamlError, read_yaml

__all__ = [
    "ConfigError",
    "HwConfig",
    "MemorySpec",
    "DramSpec",
    "Engine",
    "Dataflow",
    "load_config",
    "parse_block",
    "parse_pair",
    "ENGINES",
    "DATAFLOWS",
    "MEMORIES",
    "sram_pj_per_64b",
    "ACT_BITS",
    "WEIGHT_BITS",
    "ACC_BITS",
    "INSN_BITS",
]

ENGINES = tuple(e.value for e in Engine)
DATAFLOWS = tuple(d.value for d in Dataflow)


def _is_pow2(v: int) -> bool:
    return v > 0 and (v & (v - 1)) == 0


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
        Geometry and access energy of each memory (banks, depth per bank, word width).
    dram : DramSpec or None
        The off-chip memory of the block-sparse engine (None for the systolic model).
    weight_rows_per_word : int
        ``r = max(1, BK / BM)``: block rows in one WMEM word.
    words_per_block : int
        ``wpb = BK / r = min(BK, BM)``: WMEM words of one block (its load time in cycles).
    fill_cycles : int
        ``F = max(wpb, 3)``: a tile's wait for its first block.
    """

    name: str
    engine: Engine
    clock_mhz: float
    block_k: int
    block_n: int
    tile_m: int
    array_rows: int
    array_cols: int
    dataflow: Dataflow | None
    index_bits: int
    mem_params: tuple[tuple[str, float], ...]
    mac_pj: float
    sram_table: tuple[tuple[float, float], ...]
    dram_pj_per_64b: float
    static_mw: float
    dram: DramSpec | None = None
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

        if raw["engine"] not in ENGINES:
            raise _fail(where, "engine",
                        f"expected one of {', '.join(ENGINES)}, got {raw['engine']!r}")
        engine = Engine(raw["engine"])
        bk, bn = parse_block(raw["block"], where=where)
        dram = None
        if engine is Engine.SYSTOLIC:
            if "array" not in raw:
                raise _fail(where, "array", "missing required key for engine systolic")
            rows, cols = parse_pair(raw["array"], key="array", where=where)
            if raw.get("dataflow", "ws") not in DATAFLOWS:
                raise _fail(where, "dataflow", f"expected one of {', '.join(DATAFLOWS)}, "
                                               f"got {raw['dataflow']!r}")
            dataflow = Dataflow(raw.get("dataflow", "ws"))
            if "dram" in raw:
                raise _fail(where, "dram", "the systolic model has no DRAM section; remove it")
        else:
            if "array" in raw:
                raise _fail(where, "array", "the block_sparse engine's array follows the block "
                            f"({bk}x{bn}); remove this key")
            if "dataflow" in raw:
                raise _fail(where, "dataflow", "only the systolic engine has a dataflow; "
                            "remove this key")
            dram = _dram_spec(raw, where)
            rows, cols = bk, bn
            dataflow = None
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
            dram=dram,
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
        if self.engine is Engine.BLOCK_SPARSE:
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
        if self.dram is not None:
            for key, v in (("dram.bytes_per_cycle", self.dram.bytes_per_cycle),
                           ("dram.latency_cycles", self.dram.latency_cycles),
                           ("dram.capacity_mib", self.dram.capacity_mib)):
                if v <= 0:
                    raise _fail(where, key, f"must be positive, got {v:g}")
        object.__setattr__(self, "memories", derive_memories(self))
        check_bounds(self, lambda key, msg: _fail(where, key, msg))
        for name in MEMORIES:
            if self.memories[name].depth < 1:
                key = "memories.imem_words" if name == "imem" else f"memories.{name}_kib"
                raise _fail(where, key,
                            f"too small for one {self.memories[name].word_bits}-bit word")

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
    def weight_rows_per_word(self) -> int:
        return max(1, self.block_k // self.tile_m)

    @property
    def words_per_block(self) -> int:
        return self.block_k // self.weight_rows_per_word

    @property
    def fill_cycles(self) -> int:
        return max(self.words_per_block, 3)

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
            if self.engine is not Engine.SYSTOLIC:
                raise ConfigError(f"--array: engine {self.engine} has no configurable array "
                                  f"(its array follows the block); use a systolic config")
            raw["array"] = "%dx%d" % parse_pair(array, key="--array")
        if dataflow is not None:
            if self.engine is not Engine.SYSTOLIC:
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
        d["engine"] = self.engine.value
        d["clock_mhz"] = self.clock_mhz
        d["block"] = self.block_str
        d["tile_m"] = self.tile_m
        if self.engine is Engine.SYSTOLIC:
            d["array"] = f"{self.array_rows}x{self.array_cols}"
            d["dataflow"] = self.dataflow.value
        d["index_bits"] = self.index_bits
        d["memories"] = {k: (int(v) if float(v).is_integer() else v) for k, v in self.mem_params}
        d["energy"] = {
            "mac_pj": self.mac_pj,
            "sram_pj_per_64b": {(int(c) if c.is_integer() else c): p for c, p in self.sram_table},
            "dram_pj_per_64b": self.dram_pj_per_64b,
            "static_mw": self.static_mw,
        }
        if self.dram is not None:
            cap = self.dram.capacity_mib
            d["dram"] = {"bytes_per_cycle": self.dram.bytes_per_cycle,
                         "latency_cycles": self.dram.latency_cycles,
                         "capacity_mib": int(cap) if float(cap).is_integer() else cap}
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def derived(self) -> dict[str, Any]:
        """Every derived value, as plain data (written next to generated RTL as params.json)."""
        return {
            "name": self.name,
            "engine": self.engine.value,
            "block_k": self.block_k,
            "block_n": self.block_n,
            "tile_m": self.tile_m,
            "array_rows": self.array_rows,
            "array_cols": self.array_cols,
            "dataflow": None if self.dataflow is None else self.dataflow.value,
            "index_bits": self.index_bits,
            "clock_mhz": self.clock_mhz,
            "period_ns": self.period_ns,
            "weight_rows_per_word": self.weight_rows_per_word,
            "words_per_block": self.words_per_block,
            "fill_cycles": self.fill_cycles,
            "dram": None if self.dram is None else {
                **dataclasses.asdict(self.dram), "depth": self.dram.depth,
                "beat_bits": self.dram.beat_bits, "desc_beats": self.dram.desc_beats},
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


def _dram_spec(raw: Mapping[str, Any], where: str) -> DramSpec:
    """The ``dram`` section of a block-sparse config, checked by the schema."""
    if "dram" not in raw:
        raise _fail(where, "dram", "missing required key for engine block_sparse "
                                   "(bytes_per_cycle, latency_cycles, capacity_mib)")
    d = check_mapping(raw["dram"], DRAM_KEYS, "dram.", where)
    return DramSpec(bytes_per_cycle=d["bytes_per_cycle"], latency_cycles=d["latency_cycles"],
                    capacity_mib=float(d["capacity_mib"]))


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
