"""HwConfig: presets, derived values, overrides, and one exact error per kind of bad input."""

from __future__ import annotations

import copy

import pytest
import yaml

from lsp_codesign.config import (ConfigError, Dataflow, Engine, HwConfig, load_config,
                                 parse_block, sram_pj_per_64b)
from tests.conftest import CONFIGS


def raw(name: str = "vita.yaml") -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


def test_vita_preset_derived_values(vita):
    assert (vita.block_k, vita.block_n, vita.tile_m) == (16, 16, 16)
    assert (vita.array_rows, vita.array_cols) == (16, 16)  # the array follows the block
    assert vita.engine is Engine.BLOCK_SPARSE and vita.dataflow is None
    x = vita.memories["xmem"]
    # two banks of half the capacity each
    assert x.banks == 2 and x.word_bits == 16 * 8 and x.depth == 128 * 1024 // 16
    assert vita.memories["ymem"].word_bits == 16 * 32 + 1         # data + valid bit
    assert vita.memories["ymem"].depth == 512 * 1024 * 8 // 513
    assert vita.memories["idx"].depth == 8 * 1024 * 8 // 16
    assert vita.memories["imem"].depth == 256 and vita.memories["imem"].banks == 1
    # a 128 KiB bank sits 2/5 of the way (in log2) from 32 KiB (20 pJ) to 1 MiB (100 pJ)
    assert x.access_pj == pytest.approx((20 + 0.4 * 80) * 2)
    assert vita.weight_rows_per_word == 1 and vita.words_per_block == 16
    assert vita.fill_cycles == 16
    assert vita.period_ns == 2.0 and vita.static_pj_per_cycle == pytest.approx(40.0)
    d = vita.dram
    assert (d.bytes_per_cycle, d.latency_cycles, d.capacity_mib) == (32, 64, 16)
    assert d.beat_bits == 256 and d.depth == 16 * 2**20 // 32 and d.desc_beats == 2


def test_wide_blocks_widen_the_weight_path(vita):
    """BK > BM: a WMEM word holds BK/BM block rows, so a block loads in BM cycles."""
    c = vita.with_overrides(block="32x16")
    assert c.weight_rows_per_word == 2 and c.words_per_block == 16
    assert c.memories["wmem"].word_bits == 2 * 16 * 8
    c = vita.with_overrides(block="8x16")
    assert c.weight_rows_per_word == 1 and c.words_per_block == 8 and c.fill_cycles == 8


def test_tpu_preset(tpu):
    assert tpu.engine is Engine.SYSTOLIC and (tpu.array_rows, tpu.array_cols) == (128, 128)
    assert tpu.dataflow is Dataflow.WS and tpu.block == (32, 32) and tpu.dram is None


def test_block_override_reshapes_array_and_memories(vita):
    c = vita.with_overrides(block="32x64")
    assert (c.array_rows, c.array_cols) == (32, 64)
    assert c.memories["xmem"].word_bits == 64 * 8
    assert c.memories["ymem"].word_bits == 32 * 32 + 1
    assert c.config_hash() != vita.config_hash()
    assert load_config(CONFIGS / "vita.yaml", block="32x64") == c


def test_round_trip_and_frozen(vita):
    again = HwConfig.from_dict(yaml.safe_load(vita.to_yaml()))
    assert again == vita and again.config_hash() == vita.config_hash()
    with pytest.raises(Exception):
        vita.block_k = 8  # type: ignore[misc]


def test_sram_interpolation_clamps_and_extends():
    table = {8: 10, 32: 20, 1024: 100}
    assert sram_pj_per_64b(table, 1) == 10
    assert sram_pj_per_64b(table, 16) == pytest.approx(15)
    assert sram_pj_per_64b(table, 2048) == pytest.approx(116)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(colour="red"), "colour: unknown key (known keys:"),
    (lambda d: d["memories"].update(zmem_kib=4), "memories.zmem_kib: unknown key"),
    (lambda d: d.pop("tile_m"), "tile_m: missing required key"),
    (lambda d: d["energy"].pop("mac_pj"), "energy.mac_pj: missing required key"),
    (lambda d: d.update(tile_m="16"), "tile_m: expected int, got str '16'"),
    (lambda d: d.update(tile_m=True), "tile_m: expected int, got bool True"),
    (lambda d: d["memories"].update(xmem_kib="big"), "memories.xmem_kib: expected int or float"),
    (lambda d: d.update(tile_m=0), "tile_m: must be positive, got 0"),
    (lambda d: d.update(clock_mhz=-5), "clock_mhz: must be positive, got -5"),
    (lambda d: d["memories"].update(ymem_kib=0),
     "memories.ymem_kib: must be positive, got 0"),
    (lambda d: d.update(block="16x0"), "block: sizes must be positive, got '16x0'"),
    (lambda d: d.update(block="sixteen"), "block: expected the form AxB"),
    (lambda d: d.update(block="12x16"), "block: the block_sparse engine needs powers of two"),
    (lambda d: d.update(engine="gpu"), "engine: expected one of block_sparse, systolic, got 'gpu'"),
    (lambda d: d.update(array="16x16"), "array: the block_sparse engine's array follows the block"),
    (lambda d: d["energy"].update(mac_pj=-0.3), "energy.mac_pj: energy must not be negative"),
    (lambda d: d["energy"].update(static_mw=-1), "energy.static_mw: energy must not be negative"),
    (lambda d: d["energy"]["sram_pj_per_64b"].update({64: -3}),
     "energy.sram_pj_per_64b.64: energy must not be negative, got -3"),
    (lambda d: d["memories"].update(wmem_kib=0.1),
     "memories.wmem_kib: one bank of 0.046875 KiB cannot hold one 16x16 block"),
    # what the RTL generator or the ISA could not build is refused up front
    (lambda d: d["memories"].update(imem_words=10**20),
     "memories.imem_words: must be at most 1.04858e+06, got 1e+20"),
    (lambda d: d["memories"].update(xmem_kib=1 << 20),
     "memories.xmem_kib: 33554432 words per bank exceed the generator's 16777216 (2^24)"),
    (lambda d: d["memories"].update(xmem_kib=1e20), "memories.xmem_kib: "),
    (lambda d: d["memories"].update(ymem_kib=float("inf")),
     "memories.ymem_kib: must be a finite number, got inf"),
    (lambda d: d["memories"].update(idx_kib=float("nan")),
     "memories.idx_kib: must be a finite number, got nan"),
    (lambda d: d.update(tile_m=2), "tile_m: the block_sparse engine needs 4 <= 2 <= 256"),
    (lambda d: d.update(block="128x16"), "block: the block_sparse engine needs 2 <= 128 <= 64"),
    (lambda d: d.update(index_bits=12), "index_bits: the DMA moves whole bytes"),
    (lambda d: d.pop("dram"), "dram: missing required key for engine block_sparse"),
    (lambda d: d["dram"].update(bytes_per_cycle=24),
     "dram.bytes_per_cycle: must be a power of two from 4 to 64, got 24"),
    (lambda d: d["dram"].update(latency_cycles=0),
     "dram.latency_cycles: must be positive, got 0"),
    (lambda d: d["dram"].update(capacity_mib=float("inf")),
     "dram.capacity_mib: must be a finite number, got inf"),
    (lambda d: d["dram"].update(capacity_mib=1e6), "dram.capacity_mib: 1e+06 MiB is"),
    (lambda d: d["dram"].update(burst=4), "dram.burst: unknown key"),
])
def test_bad_vita_config_errors(mutate, message):
    d = copy.deepcopy(raw())
    mutate(d)
    with pytest.raises(ConfigError) as exc:
        HwConfig.from_dict(d, source="cfg.yaml")
    assert str(exc.value).startswith("cfg.yaml: ")
    assert message in str(exc.value)


def test_block_must_tile_systolic_array():
    d = raw("tpu_v3.yaml")
    d["block"] = "256x32"
    with pytest.raises(ConfigError, match=r"block: block 256x32 does not fit the 128x128 array"):
        HwConfig.from_dict(d, source="t.yaml")
    d = raw("tpu_v3.yaml")
    d.pop("array")
    with pytest.raises(ConfigError, match="array: missing required key for engine systolic"):
        HwConfig.from_dict(d)
    d = raw("tpu_v3.yaml")
    d["dram"] = raw()["dram"]
    with pytest.raises(ConfigError, match="dram: the systolic model has no DRAM section"):
        HwConfig.from_dict(d)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level, got list"):
        load_config(lst)


def test_override_errors(vita, tpu):
    with pytest.raises(ConfigError, match="--array: engine block_sparse has no configurable"):
        vita.with_overrides(array="8x8")
    with pytest.raises(ConfigError, match="--dataflow: engine block_sparse has no dataflow"):
        vita.with_overrides(dataflow="os")
    with pytest.raises(ConfigError, match="--block: expected the form AxB"):
        vita.with_overrides(block="16by16")
    with pytest.raises(ConfigError, match="--dataflow: expected one of os, ws, is"):
        tpu.with_overrides(dataflow="rs")
    assert tpu.with_overrides(array="32x16", block="16x16").array_cols == 16


def test_parse_block():
    assert parse_block("32x64") == (32, 64)
    assert parse_block([8, 16]) == (8, 16)
    with pytest.raises(ConfigError):
        parse_block("32x")


# -- the validation layer: what a file may hold, and bounded work ------------------------------


def _write(tmp_path, text: str | bytes, name: str = "c.yaml"):
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def _vita_text(**changes: str) -> str:
    text = (CONFIGS / "vita.yaml").read_text()
    for old, new in changes.items():
        assert old in text
        text = text.replace(old, new)
    return text


def test_exponent_numbers_are_numbers(tmp_path):
    cfg = load_config(_write(tmp_path, _vita_text(**{"clock_mhz: 500": "clock_mhz: 5e2",
                                                      "imem_words: 256": "imem_words: 2.56e2"})))
    assert cfg.clock_mhz == 500.0 and cfg.memories["imem"].depth == 256
    with pytest.raises(ConfigError, match="memories.imem_words: expected int, got float 256.5"):
        load_config(_write(tmp_path, _vita_text(**{"imem_words: 256": "imem_words: 2.565e2"})))


@pytest.mark.parametrize("old, new, message", [
    ("clock_mhz: 500", "clock_mhz: .nan", "clock_mhz: must be a finite number, got nan"),
    ("clock_mhz: 500", "clock_mhz: .inf", "clock_mhz: must be a finite number, got inf"),
    ("mac_pj: 0.3", "mac_pj: .nan", "energy.mac_pj: must be a finite number, got nan"),
    ("mac_pj: 0.3", "mac_pj: -.inf", "energy.mac_pj: must be a finite number, got -inf"),
    ("static_mw: 20", "static_mw: .NaN", "energy.static_mw: must be a finite number"),
    ("1024: 100", "1024: .inf", "energy.sram_pj_per_64b.1024: must be a finite number"),
    ("imem_words: 256", "imem_words: 1e20", "memories.imem_words: must be at most 1.04858e+06"),
    ("xmem_kib: 256", "xmem_kib: 1e300", "memories.xmem_kib: must be at most"),
    ("tile_m: 16", "tile_m: 1e9", "tile_m: must be at most 4096"),
    ("block: 16x16", "block: 131072x16", "block: sizes must be at most 65536"),
    ("block: 16x16", "block: 99999999999x1", "block: expected the form AxB"),
])
def test_non_finite_and_out_of_bound_numbers_are_refused(tmp_path, old, new, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("+", r"\+")):
        load_config(_write(tmp_path, _vita_text(**{old: new})))


def test_duplicate_keys_and_aliases_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"c\.yaml: line 4, column 1: duplicate key 'engine'"):
        load_config(_write(tmp_path, "name: a\nengine: block_sparse\nclock_mhz: 1\n"
                                     "engine: systolic\n"))
    with pytest.raises(ConfigError, match="YAML aliases are not allowed"):
        load_config(_write(tmp_path, _vita_text(**{"name: vita": "name: &n vita",
                                                   "description: ViTA-like": "description: *n #"})))


def test_billion_laughs_fails_at_once(tmp_path):
    levels = ['&a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        prev, cur = chr(96 + i), chr(97 + i)
        levels.append(f"&{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    # 9^9 "lol"s once expanded, inside a key that exists (an unknown key would stop it early)
    path = _write(tmp_path, _vita_text(**{"description: ViTA-like": "description: ["
                                          + ", ".join(levels) + "] #"}))
    assert path.stat().st_size < 4096
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert "YAML aliases are not allowed (*a)" in msg and len(msg) < 200 and "\n" not in msg


@pytest.mark.parametrize("content, message", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary data (a NUL byte at offset 8)"),
    (b"name: \xff\xfe vita\n", "not UTF-8 text (byte 6)"),
    (b"name: [unclosed\n", "not valid YAML: line 2, column 1: expected ',' or ']'"),
    (b"name: x\n  bad: 1\n", "not valid YAML: line 2, column 6: mapping values are not allowed"),
    (b"!!python/object/apply:os.system [echo hi]\n", "could not determine a constructor"),
    (b"a: " + b"[" * 40 + b"]" * 40 + b"\n", "nested more than 32 levels deep"),
    (b"x: 1\n" * 300_000, "larger than 1024 KiB"),
    (b"? [1, 2]\n: 3\n", "a mapping key must be a plain value"),
])
def test_unreadable_files_are_one_line(tmp_path, content, message):
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, content))
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert str(exc.value).startswith(str(tmp_path / "c.yaml"))


def test_long_values_are_never_printed_whole(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, _vita_text(**{"tile_m: 16": "tile_m: '" + "9" * 5000 + "'"})))
    assert "tile_m: expected int, got str '999" in str(exc.value) and len(str(exc.value)) < 200
    with pytest.raises(ConfigError, match="has 5000 characters; at most 2000"):
        load_config(_write(tmp_path, _vita_text(**{"description: ViTA-like": "description: "
                                                   + "x" * 5000 + " #"})))
