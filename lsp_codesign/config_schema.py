"""What a hardware config file may say: its keys, their kinds and bounds, checked one by one.

This is the first half of the config validation layer: every raw value read from YAML (or given
on the command line) is checked here before :class:`lsp_codesign.config.HwConfig` is built,
and :meth:`HwConfig.__post_init__` then checks the rules between values (powers of two, a block
that fits the array, memories that hold one block). Every problem is one :class:`ConfigError`
naming the file, the key and the value; a value is never printed longer than 40 characters.

Numbers must be finite and at most the bound of their key; an integer key accepts an integral
float (``1e3``). Unknown keys are errors.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

from .errors import LspError

__all__ = ["ConfigError", "parse_pair", "parse_block", "MAX_PAIR", "TOP_KEYS", "MEM_KEYS",
           "DRAM_KEYS", "ENERGY_KEYS", "check_mapping", "check_sram_table", "fail"]


class ConfigError(LspError, ValueError):
    """A hardware configuration is malformed; the message names the key (and file) and value."""


def fail(where: str, key: str, msg: str) -> ConfigError:
    prefix = f"{where}: " if where else ""
    return ConfigError(f"{prefix}{key}: {msg}")


def _short(v: Any, limit: int = 40) -> str:
    """``repr(v)``, cut to ``limit`` characters (error messages never print a huge value)."""
    text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _key(k: Any) -> str:
    """A mapping key as it is named in messages."""
    return k if isinstance(k, str) and len(k) <= 40 and k.isprintable() else _short(k)


MAX_PAIR = 1 << 16


def parse_pair(text: Any, *, key: str, where: str = "") -> tuple[int, int]:
    """Parse ``"16x32"`` (or a two-element list) into a pair of positive integers."""
    bad = f"expected the form AxB with positive integers, got {_short(text)}"
    if isinstance(text, (list, tuple)) and len(text) == 2:
        a, b = text
    elif isinstance(text, str):
        m = re.fullmatch(r"\s*(\d{1,9})\s*[xX×]\s*(\d{1,9})\s*", text)
        if not m:
            raise fail(where, key, bad)
        a, b = int(m.group(1)), int(m.group(2))
    else:
        raise fail(where, key, bad)
    for v in (a, b):
        if isinstance(v, bool) or not isinstance(v, int):
            raise fail(where, key, f"expected integers, got {_short(text)}")
        if v <= 0:
            raise fail(where, key, f"sizes must be positive, got {_short(text)}")
        if v > MAX_PAIR:
            raise fail(where, key, f"sizes must be at most {MAX_PAIR}, got {_short(text)}")
    return int(a), int(b)


def parse_block(text: Any, *, key: str = "block", where: str = "") -> tuple[int, int]:
    """Parse a block size ``BKxBN`` (``16x32``: BK=16 output features, BN=32 input features)."""
    return parse_pair(text, key=key, where=where)


# ----------------------------------------------------------------------------------------------
# Schema: every key, its kind, whether it is required and its upper bound. Unknown keys are
# errors. Kinds: str (bound: length), int (an integral float such as 1e3 is accepted), num (a
# finite int or float), pair (AxB, see parse_pair), map. Lower bounds (positive, not negative)
# are checked in HwConfig.__post_init__, which every construction goes through.
# ----------------------------------------------------------------------------------------------

TOP_KEYS = {
    "name": ("str", True, 100),
    "description": ("str", False, 2000),
    "engine": ("str", True, 100),
    "clock_mhz": ("num", True, 1e5),
    "block": ("pair", True, None),
    "tile_m": ("int", True, 4096),
    "array": ("pair", False, None),
    "dataflow": ("str", False, 100),
    "index_bits": ("int", False, 32),
    "memories": ("map", True, 16),
    "energy": ("map", True, 16),
    "dram": ("map", False, 16),
}
MEM_KEYS = {
    "imem_words": ("int", True, 1 << 20),
    "xmem_kib": ("num", True, 1 << 20),
    "wmem_kib": ("num", True, 1 << 20),
    "idx_kib": ("num", True, 1 << 20),
    "ymem_kib": ("num", True, 1 << 20),
}
DRAM_KEYS = {
    "bytes_per_cycle": ("int", True, 1 << 10),
    "latency_cycles": ("int", True, 1 << 20),
    "capacity_mib": ("num", True, 1 << 20),
}
ENERGY_KEYS = {
    "mac_pj": ("num", True, 1e6),
    "sram_pj_per_64b": ("map", True, 64),
    "dram_pj_per_64b": ("num", True, 1e9),
    "static_mw": ("num", True, 1e9),
}
_KIND_NAMES = {"str": "str", "int": "int", "num": "int or float", "pair": "str or list",
               "map": "dict"}
_KIND_TYPES = {"str": str, "int": (int, float), "num": (int, float), "pair": (str, list),
               "map": dict}


def _check_value(kind: str, high: Any, v: Any, key: str, where: str) -> Any:
    """One value checked against its kind and upper bound; returns it normalised."""
    if isinstance(v, bool) or not isinstance(v, _KIND_TYPES[kind]):
        raise fail(where, key, f"expected {_KIND_NAMES[kind]}, got {type(v).__name__} "
                                f"{_short(v)}")
    if kind in ("int", "num") and not math.isfinite(v):
        raise fail(where, key, f"must be a finite number, got {v}")
    if kind == "int" and isinstance(v, float):
        if not v.is_integer():
            raise fail(where, key, f"expected int, got float {_short(v)}")
        v = int(v)
    if kind in ("int", "num") and v > high:
        raise fail(where, key, f"must be at most {high:g}, got {v:g}")
    if kind in ("str", "map") and len(v) > high:
        what = "characters" if kind == "str" else "entries"
        raise fail(where, key, f"has {len(v)} {what}; at most {high} are allowed")
    return v


def check_mapping(d: Mapping[str, Any], schema: Mapping[str, tuple], path: str,
             where: str) -> dict[str, Any]:
    """The mapping with every key known, every required key present and every value checked."""
    for k in d:
        if k not in schema:
            known = ", ".join(sorted(schema))
            raise fail(where, f"{path}{_key(k)}", f"unknown key (known keys: {known})")
    out = {}
    for k, (kind, required, high) in schema.items():
        if k not in d:
            if required:
                raise fail(where, f"{path}{k}", "missing required key")
            continue
        out[k] = _check_value(kind, high, d[k], f"{path}{k}", where)
    return out


def check_sram_table(table: Mapping[Any, Any], where: str) -> list[tuple[float, float]]:
    """``energy.sram_pj_per_64b``: capacities in KiB (numbers) to finite pJ."""
    out = []
    for k, v in table.items():
        key = f"energy.sram_pj_per_64b.{_key(k)}"
        try:
            cap = float(k) if isinstance(k, (str, int, float)) and not isinstance(k, bool) \
                else None
        except ValueError:
            cap = None
        if cap is None or not math.isfinite(cap) or cap > 1 << 30:
            raise fail(where, key, "keys are SRAM capacities in KiB (finite numbers up to "
                                    f"{1 << 30})")
        out.append((cap, float(_check_value("num", 1e9, v, key, where))))
    return out
