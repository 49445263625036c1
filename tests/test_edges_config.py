"""HwConfig at its edges: each validation rule at its boundary, each branch of a rule on its own,
the exact error text (file, key, value), defaults, overrides, and what to_dict/derived write.

Expected values come from docs/config.md (the rules and defaults), from the preset files, or are
worked by hand in the comments; none is copied from the code's output.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import yaml

from lsp_codesign.config import ConfigError, Dataflow, HwConfig, _is_pow2, load_config
from tests.conftest import CONFIGS

VITA_DESCRIPTION = "ViTA-like block-sparse engine, PE array shaped by the block (BK x BN)"


def raw(name: str = "vita.yaml") -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


def error(d, source: str = "cfg.yaml") -> str:
    with pytest.raises(ConfigError) as exc:
        HwConfig.from_dict(d, source=source)
    return str(exc.value)


def test_is_pow2_is_the_mathematical_definition():
    powers = {2 ** k for k in range(16)}       # 1 = 2^0 is a power of two, 0 is not
    for v in [-8, -4, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 63, 64, 65, 96, 1 << 15]:
        assert _is_pow2(v) == (v in powers), v


def test_top_level_must_be_a_mapping():
    with pytest.raises(ConfigError) as exc:
        HwConfig.from_dict([1, 2])
    assert str(exc.value) == "config: expected a mapping at the top level, got list"
    with pytest.raises(ConfigError) as exc:
        HwConfig.from_dict("name: x", source="f.yaml")
    assert str(exc.value) == "f.yaml: expected a mapping at the top level, got str"


def _set(path: str, value):
    """A mutation of the raw mapping that sets ``a.b`` to value (None removes it)."""
    def mutate(d):
        *parents, last = path.split(".")
        for p in parents:
            d = d[p]
        if value is None:
            d.pop(last)
        else:
            d[last] = value
    return mutate


SHIFTS = "the block_sparse engine needs powers of two >= 2 (address arithmetic is shifts), got"


@pytest.mark.parametrize("change, message", [
    (_set("engine", "gpu"), "engine: expected one of block_sparse, systolic, got 'gpu'"),
    (_set("array", "16x16"),
     "array: the block_sparse engine's array follows the block (16x16); remove this key"),
    (_set("dataflow", "ws"),
     "dataflow: only the systolic engine has a dataflow; remove this key"),
    (_set("dram", None), "dram: missing required key for engine block_sparse "
                         "(bytes_per_cycle, latency_cycles, capacity_mib)"),
    (_set("clock_mhz", 0), "clock_mhz: must be positive, got 0"),
    # BK, BN and BM each checked, each named by its own key
    (_set("block", "12x16"), f"block: {SHIFTS} 12"),
    (_set("block", "16x12"), f"block: {SHIFTS} 12"),
    (_set("tile_m", 12), f"tile_m: {SHIFTS} 12"),
    # 1 = 2^0 is a power of two: only the ">= 2" half of the rule refuses it
    (_set("block", "1x16"), f"block: {SHIFTS} 1"),
    (_set("tile_m", 1), f"tile_m: {SHIFTS} 1"),
    (_set("energy.sram_pj_per_64b", {}),
     "energy.sram_pj_per_64b: needs at least one capacity: pJ entry"),
    (_set("energy.sram_pj_per_64b", {0: 5, 8: 10}),
     "energy.sram_pj_per_64b: capacities must be positive KiB, got 0"),
    (_set("energy.sram_pj_per_64b", {-8: 5, 8: 10}),
     "energy.sram_pj_per_64b: capacities must be positive KiB, got -8"),
    (_set("energy.dram_pj_per_64b", -1),
     "energy.dram_pj_per_64b: energy must not be negative, got -1"),
    (_set("dram.bytes_per_cycle", 0), "dram.bytes_per_cycle: must be positive, got 0"),
    (_set("dram.capacity_mib", 0), "dram.capacity_mib: must be positive, got 0"),
    (_set("dram.capacity_mib", -1.5), "dram.capacity_mib: must be positive, got -1.5"),
    (_set("memories.imem_words", 0), "memories.imem_words: must be positive, got 0"),
])
def test_block_sparse_errors_are_exact(change, message):
    d = copy.deepcopy(raw())
    change(d)
    assert error(d) == f"cfg.yaml: {message}"


def test_schema_errors_name_the_key_with_its_section():
    """Keys are named by their full path, right after the file: never a stray prefix."""
    d = raw()
    d["colour"] = "red"
    assert error(d).startswith("cfg.yaml: colour: unknown key (known keys: array, block, ")
    d = raw()
    d["energy"]["sram_pj_per_64b"][1024] = float("inf")
    assert error(d) == "cfg.yaml: energy.sram_pj_per_64b.1024: must be a finite number, got inf"
    d = raw()
    d["energy"]["sram_pj_per_64b"]["big"] = 3
    assert error(d).startswith("cfg.yaml: energy.sram_pj_per_64b.big: keys are SRAM capacities")


@pytest.mark.parametrize("change, message", [
    (_set("array", None), "array: missing required key for engine systolic"),
    (_set("array", "128by128"),
     "array: expected the form AxB with positive integers, got '128by128'"),
    (_set("dram", raw()["dram"]), "dram: the systolic model has no DRAM section; remove it"),
    (_set("dataflow", "rs"), "dataflow: expected one of os, ws, is, got 'rs'"),
    (_set("index_bits", 7), "index_bits: must be between 8 and 32, got 7"),
    # rows must be a multiple of BN, columns of BK: each half of the rule on its own
    (_set("block", "32x256"), "block: block 32x256 does not fit the 128x128 array: array rows "
                              "must be a multiple of BN and array columns a multiple of BK"),
    (_set("block", "256x32"), "block: block 256x32 does not fit the 128x128 array: array rows "
                              "must be a multiple of BN and array columns a multiple of BK"),
    # one bank (the systolic model has one per memory) of 0.03 KiB = 245.76 bits: no 256-bit word
    (_set("memories.xmem_kib", 0.03), "memories.xmem_kib: too small for one 256-bit word"),
])
def test_systolic_errors_are_exact(change, message):
    d = copy.deepcopy(raw("tpu_v3.yaml"))
    change(d)
    assert error(d, "t.yaml") == f"t.yaml: {message}"


def test_errors_without_a_source_name_only_the_key():
    d = raw()
    d["tile_m"] = 0
    assert error(d, source="") == "tile_m: must be positive, got 0"
    cfg = HwConfig.from_dict(raw())
    assert cfg.source == ""


# -- what is accepted: the smallest legal values ---------------------------------------------


def _build(name: str = "vita.yaml", **changes) -> HwConfig:
    d = copy.deepcopy(raw(name))
    for path, value in changes.items():
        _set(path.replace("__", "."), value)(d)
    return HwConfig.from_dict(d, source="ok.yaml")


def test_smallest_block_sparse_sizes_are_accepted():
    """docs/config.md: 2 <= BK, BN (powers of two) and BM >= 4."""
    c = _build(block="2x2", tile_m=4)
    assert (c.block_k, c.block_n, c.tile_m) == (2, 2, 4)
    assert (c.array_rows, c.array_cols) == (2, 2)


def test_index_bits_8_and_32_are_accepted():
    """docs/config.md: index_bits 8, 16 or 32 (the ends of the 8..32 range included)."""
    assert _build(index_bits=8).index_bits == 8
    assert _build(index_bits=32).index_bits == 32
    assert _build("tpu_v3.yaml", index_bits=8).index_bits == 8
    assert _build("tpu_v3.yaml", index_bits=32).index_bits == 32


def test_index_bits_above_32_is_refused_on_every_construction(tpu):
    """The schema stops 33 in a file; a config built directly is checked the same way."""
    with pytest.raises(ConfigError) as exc:
        dataclasses.replace(tpu, index_bits=33)
    assert str(exc.value) == f"{tpu.source}: index_bits: must be between 8 and 32, got 33"


def test_positive_sizes_below_one_are_accepted():
    """'Positive' means > 0, not >= 1: a clock of 0.5 MHz, a latency of one cycle, half a MiB of
    DRAM (2^19 / 32 = 16384 beats)."""
    c = _build(clock_mhz=0.5)
    assert c.clock_mhz == 0.5 and c.period_ns == 2000.0
    c = _build(dram__latency_cycles=1, dram__capacity_mib=0.5)
    assert c.dram.latency_cycles == 1 and c.dram.depth == 16384


def test_systolic_tile_of_one_token_is_accepted():
    """Only the block-sparse engine needs BM to be a power of two >= 4; the systolic model takes
    any positive BM."""
    assert _build("tpu_v3.yaml", tile_m=1).tile_m == 1
    assert _build("tpu_v3.yaml", tile_m=3).tile_m == 3


def test_zero_energies_are_accepted():
    """Energies must not be negative: zero is allowed (an idealised part)."""
    c = _build(energy__mac_pj=0, energy__dram_pj_per_64b=0, energy__static_mw=0)
    assert (c.mac_pj, c.dram_pj_per_64b, c.static_mw) == (0.0, 0.0, 0.0)
    assert c.static_pj_per_cycle == 0.0


def test_small_sram_table_entries_are_accepted():
    """A capacity below 1 KiB is positive, and an energy of 0 or 0.5 pJ is not negative."""
    c = _build(energy__sram_pj_per_64b={0.5: 0, 8: 0.5, 1024: 100})
    assert c.sram_table == ((0.5, 0.0), (8.0, 0.5), (1024.0, 100.0))


def test_systolic_bank_of_exactly_one_word_is_accepted():
    """tpu_v3: block 32x32, one bank per memory, an X word is BN = 32 bytes = 256 bits.
    32 bytes = 0.03125 KiB hold exactly one word; 0.03 KiB (refused above) hold none."""
    c = _build("tpu_v3.yaml", memories__xmem_kib=0.03125)
    assert c.memories["xmem"].depth == 1 and c.memories["xmem"].word_bits == 256


def test_instruction_memory_too_small_is_named_by_its_own_key(tpu):
    """imem_words is a word count: half a word (only reachable by building directly) is refused
    under memories.imem_words, not under a *_kib key."""
    params = tuple((k, 0.5 if k == "imem_words" else v) for k, v in tpu.mem_params)
    with pytest.raises(ConfigError) as exc:
        dataclasses.replace(tpu, mem_params=params)
    assert str(exc.value) == f"{tpu.source}: memories.imem_words: too small for one 32-bit word"


# -- defaults ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [(None, Dataflow.WS), ("os", Dataflow.OS),
                                             ("ws", Dataflow.WS), ("is", Dataflow.IS)])
def test_systolic_dataflow_is_read_and_defaults_to_ws(value, expected):
    """docs/config.md: `dataflow` os/ws/is, systolic only, default ws."""
    c = _build("tpu_v3.yaml", dataflow=value)
    assert c.dataflow is expected
    assert c.derived()["dataflow"] == expected.value


@pytest.mark.parametrize("name", ["vita.yaml", "tpu_v3.yaml"])
def test_index_bits_defaults_to_16(name):
    """docs/config.md: index_bits is optional, default 16."""
    assert _build(name, index_bits=None).index_bits == 16


def test_description_is_read_and_optional():
    assert _build().description == VITA_DESCRIPTION
    c = _build(description=None)
    assert c.description == ""
    assert "description" not in c.to_dict()


# -- overrides ----------------------------------------------------------------------------------


def test_tile_and_clock_overrides(vita):
    c = vita.with_overrides(tile_m=32, clock_mhz=250)
    assert c.tile_m == 32 and c.clock_mhz == 250.0
    assert c.period_ns == 4.0                      # 1000 / 250 MHz
    # BK = 16 < BM = 32: one block row per WMEM word, 16 words per block
    assert c.weight_rows_per_word == 1 and c.words_per_block == 16
    assert (c.block_k, c.block_n) == (vita.block_k, vita.block_n)


def test_overrides_mark_the_source(vita):
    assert vita.with_overrides(tile_m=32).source == f"{vita.source} (with overrides)"
    plain = HwConfig.from_dict(raw())
    assert plain.with_overrides(tile_m=32).source == ""
    with pytest.raises(ConfigError) as exc:
        vita.with_overrides(tile_m=3)
    assert str(exc.value) == f"{vita.source} (with overrides): tile_m: {SHIFTS} 3"


@pytest.mark.parametrize("flow", ["os", "ws", "is"])
def test_dataflow_override(tpu, flow):
    c = tpu.with_overrides(dataflow=flow)
    assert c.dataflow is Dataflow(flow) and c.to_dict()["dataflow"] == flow
    assert (c.array_rows, c.array_cols) == (128, 128)


@pytest.mark.parametrize("preset, overrides, message", [
    ("vita", dict(dataflow="os"),
     "--dataflow: engine block_sparse has no dataflow option; use a systolic config"),
    ("vita", dict(array="8x8"),
     "--array: engine block_sparse has no configurable array (its array follows the block); "
     "use a systolic config"),
    ("tpu", dict(array="8by8"),
     "--array: expected the form AxB with positive integers, got '8by8'"),
    ("vita", dict(block="16x0"), "--block: sizes must be positive, got '16x0'"),
])
def test_override_errors_are_exact(request, preset, overrides, message):
    cfg = request.getfixturevalue(preset)
    with pytest.raises(ConfigError) as exc:
        cfg.with_overrides(**overrides)
    assert str(exc.value) == message


def test_load_config_without_overrides():
    """Options left unset on the command line arrive as None: no override, same source."""
    path = CONFIGS / "vita.yaml"
    c = load_config(path, block=None, tile_m=None)
    assert c.source == str(path) and c == load_config(path)


def test_load_config_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((CONFIGS / "vita.yaml").read_text().replace("tile_m: 16", "tile_m: 0"))
    with pytest.raises(ConfigError) as exc:
        load_config(bad)
    assert str(exc.value) == f"{bad}: tile_m: must be positive, got 0"
    assert load_config(CONFIGS / "vita.yaml").source == str(CONFIGS / "vita.yaml")
    # a path that exists but is not a file
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path)
    assert str(exc.value) == f"{tmp_path}: config file not found"
    big = tmp_path / "big.yaml"
    big.write_bytes(b"x: 1\n" * 300_000)
    with pytest.raises(ConfigError) as exc:
        load_config(big)
    assert str(exc.value) == f"{big}: larger than 1024 KiB; not a config file"


# -- what to_dict, to_yaml and derived write ---------------------------------------------------


@pytest.mark.parametrize("name", ["vita.yaml", "tpu_v3.yaml"])
def test_to_dict_writes_the_preset_back(name):
    """A preset written back is the preset file's mapping, whole numbers as integers (as in the
    file), and the YAML starts with the name like the files do."""
    cfg = load_config(CONFIGS / name)
    want = raw(name)
    d = cfg.to_dict()
    assert d == want
    for section in ("memories", "dram"):
        for k, v in want.get(section, {}).items():
            assert type(d[section][k]) is type(v), (section, k)
    assert [type(k) for k in d["energy"]["sram_pj_per_64b"]] == [int, int, int]
    text = cfg.to_yaml()
    assert text.splitlines()[0] == f"name: {want['name']}"
    assert yaml.safe_load(text) == want
    assert HwConfig.from_dict(yaml.safe_load(text), source=name) == cfg


def test_fractional_sizes_survive_the_round_trip():
    c = _build(memories__xmem_kib=0.25, dram__capacity_mib=0.5,
               energy__sram_pj_per_64b={0.5: 3, 8: 10})
    d = c.to_dict()
    assert d["memories"]["xmem_kib"] == 0.25 and d["dram"]["capacity_mib"] == 0.5
    assert d["energy"]["sram_pj_per_64b"] == {0.5: 3, 8: 10}
    assert HwConfig.from_dict(yaml.safe_load(c.to_yaml())) == c


def test_derived_values_of_vita_by_hand(vita):
    d = vita.derived()
    json.dumps(d)                                  # written as params.json
    assert {k: d[k] for k in ("name", "engine", "block_k", "block_n", "tile_m", "array_rows",
                              "array_cols", "dataflow", "index_bits", "clock_mhz")} == {
        "name": "vita", "engine": "block_sparse", "block_k": 16, "block_n": 16, "tile_m": 16,
        "array_rows": 16, "array_cols": 16, "dataflow": None, "index_bits": 16,
        "clock_mhz": 500.0}
    # 500 MHz: 2 ns; BK = BM = 16: one block row per word, 16 words per block, F = max(16, 3)
    assert (d["period_ns"], d["weight_rows_per_word"], d["words_per_block"],
            d["fill_cycles"]) == (2.0, 1, 16, 16)
    # 32 bytes per beat = 256 bits; 16 MiB / 32 B = 2^19 beats; a 512-bit descriptor = 2 beats
    assert d["dram"] == {"bytes_per_cycle": 32, "latency_cycles": 64, "capacity_mib": 16.0,
                         "depth": 1 << 19, "beat_bits": 256, "desc_beats": 2}
    assert d["counter_bits"] == 48
    # X: 256 KiB in two banks of 128 KiB, words of BN = 16 bytes: 8192 words of 128 bits
    x = d["memories"]["xmem"]
    assert (x["name"], x["banks"], x["word_bits"], x["depth"]) == ("xmem", 2, 128, 8192)
    assert set(d["memories"]) == {"imem", "xmem", "wmem", "idx", "ymem"}
    # 1950 pJ per 64 bits = 243.75 pJ per byte; 20 mW x 2 ns = 40 pJ per cycle
    assert d["energy"] == {"mac_pj": 0.3, "dram_pj_per_byte": pytest.approx(243.75),
                           "static_pj_per_cycle": pytest.approx(40.0)}


def test_derived_values_of_the_systolic_preset(tpu):
    d = tpu.derived()
    json.dumps(d)
    assert d["engine"] == "systolic" and d["dataflow"] == "ws" and d["dram"] is None
    assert (d["array_rows"], d["array_cols"]) == (128, 128)
    assert d["memories"]["xmem"]["banks"] == 1


def test_config_hash_is_twelve_hex_digits_and_ignores_the_source(vita):
    h = vita.config_hash()
    assert len(h) == 12 and int(h, 16) >= 0
    assert HwConfig.from_dict(raw(), source="elsewhere.yaml").config_hash() == h
    assert vita.with_overrides(clock_mhz=400).config_hash() != h


def test_config_hash_is_stable_across_versions():
    """Run directories store ``hw.config_hash`` and read_run compares it with the hash of their
    hw.yaml, so the hash of a given config is part of the on-disk format: it must not change
    between versions. This mapping is the vita preset that bench/results/rtl_speed.json recorded
    (2026-12-03) under the hash 60043876cbaf; key order, int/float spelling and the source do not
    matter."""
    d = {
        "dram": {"capacity_mib": 16.0, "latency_cycles": 64, "bytes_per_cycle": 32},
        "energy": {"static_mw": 20, "dram_pj_per_64b": 1950, "sram_pj_per_64b":
                   {1024: 100, 32: 20, 8: 10}, "mac_pj": 0.3},
        "memories": {"ymem_kib": 1024, "idx_kib": 16, "wmem_kib": 256.0, "xmem_kib": 256,
                     "imem_words": 256},
        "index_bits": 16, "tile_m": 16, "block": "16x16", "clock_mhz": 500,
        "engine": "block_sparse", "description": VITA_DESCRIPTION, "name": "vita",
    }
    assert HwConfig.from_dict(d, source="any.yaml").config_hash() == "60043876cbaf"
