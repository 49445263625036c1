"""The top of the block-sparse engine: front-end, sequencer, DMA, compute side and memories.

Everything here follows ``docs/hw.md``; every size comes from the one
:class:`~lsp_codesign.config.HwConfig` the top is built from, and the leaf modules take plain
integers derived from it.

::

    IMEM ─► front-end (fetch, decode, x0..x31) ── lsp.tiles / lsp.gemm ─► Sequencer (phases)
    DRAM port ◄─► Dma ─► fill banks of XMEM / WMEM / IDX;  store bank of YMEM ─► Dma
    compute banks ─► TileCompute, WeightBuffer, PEArray (BK x BN), AccumulatorBanks ─► YMEM

Front-end timing: every instruction takes a FETCH cycle (IMEM read of ``pc``) and an EXECUTE
cycle; ``lsp.gemm`` then holds the front-end while the sequencer is busy. Choices the spec leaves
open (``docs/rtl.md``): ``lsp.gemm`` retires when it completes (not when it faults);
``lsp.rdctr`` reads a counter as it was at the start of its execute cycle, low 32 bits;
``pc_overflow`` is raised in the FETCH cycle whose ``pc`` equals the IMEM depth; ``start`` clears
x1..x31 and the ``lsp.tiles`` registers, so every run starts from the same state.
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from lsp_codesign import isa
from lsp_codesign.config import ACC_BITS, Engine as EngineKind, HwConfig
from lsp_codesign.hwspec import DATA_MEMORIES

from .buffers import AccumulatorBanks, WeightBuffer
from .compute import TileCompute
from .counters import PerfCounters
from .decoder import Decoder
from .dma import Dma
from .memories import Sram
from .pe_array import PEArray
from .sequencer import Sequencer

__all__ = ["Engine", "TOP_NAME", "bank_name"]

#: Name of the generated Verilog top module.
TOP_NAME = "lsp_engine"
#: The custom-0 operations the front-end executes (checked against lsp_codesign.isa.OPS).
_IMPLEMENTED_OPS = frozenset({"lsp.tiles", "lsp.gemm", "lsp.fence", "lsp.rdctr", "lsp.halt"})
_FIELDS = ("tt", "kg", "ng", "r", "nnz")


def bank_name(memory: str, bank: int) -> str:
    """Instance name of one SRAM bank under the top (``xmem_b0`` ...)."""
    return memory if memory == "imem" else f"{memory}_b{bank}"


def _addr(addr, spec):
    return addr[:spec.addr_bits]


class Engine(wiring.Component):
    """Block-sparse GEMM engine built from a :class:`~lsp_codesign.config.HwConfig`.

    Parameters
    ----------
    config : HwConfig
        A ``block_sparse`` configuration: block, tile, memories, DRAM, index width.

    Attributes
    ----------
    start : Signal(1), in
        One-cycle pulse while idle: clear the counters and the error, ``pc`` <- 0, run.
    running, done, error : Signal(1), out
        Running (from the cycle after ``start`` to the halt or error cycle); stopped after a
        halt or an error; stopped on an error.
    err_code : Signal(3), out
        Cause, numbered as :class:`lsp_codesign.isa.ErrorCode`.
    imem_addr, imem_wdata, imem_we : in
        Program writes while idle.
    dram_addr : Signal(32), out
    dram_re, dram_we : Signal(1), out
    dram_rdata : Signal(8 * B), in
        Beat read in the previous cycle.
    dram_wdata : Signal(8 * B), out
    ctr_sel : Signal(5), in
    ctr_value : Signal(counter_bits), out
    reg_sel : Signal(5), in
    reg_value : Signal(32), out
    """

    def __init__(self, *, config: HwConfig) -> None:
        if not isinstance(config, HwConfig):
            raise TypeError(f"config must be an HwConfig, not {config!r}")
        if config.engine is not EngineKind.BLOCK_SPARSE:
            raise ValueError(f"config {config.name!r} has engine {config.engine.value!r}; the "
                             "RTL implements the block_sparse engine only")
        ops = {op.mnemonic for op in isa.OPS}
        if ops != _IMPLEMENTED_OPS:
            raise ValueError(f"the ISA and the engine differ: no RTL for "
                             f"{sorted(ops - _IMPLEMENTED_OPS)}, no ISA entry for "
                             f"{sorted(_IMPLEMENTED_OPS - ops)}")
        if len(isa.COUNTERS) > 32:
            raise ValueError(f"ctr_sel is 5 bits but the ISA has {len(isa.COUNTERS)} counters")
        self._config = config
        imem = config.memories["imem"]
        super().__init__({
            "start": In(1), "running": Out(1), "done": Out(1), "error": Out(1),
            "err_code": Out(3),
            "imem_addr": In(imem.addr_bits), "imem_wdata": In(32), "imem_we": In(1),
            "dram_addr": Out(32), "dram_re": Out(1), "dram_we": Out(1),
            "dram_rdata": In(config.dram.beat_bits), "dram_wdata": Out(config.dram.beat_bits),
            "ctr_sel": In(5), "ctr_value": Out(config.counter_bits),
            "reg_sel": In(5), "reg_value": Out(32),
        })

    @property
    def config(self) -> HwConfig:
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        specs = cfg.memories
        srams = {"imem": Sram(width=32, depth=specs["imem"].depth)}
        for name in DATA_MEMORIES:
            for b in range(2):
                srams[bank_name(name, b)] = Sram(width=specs[name].word_bits,
                                                 depth=specs[name].depth)
        for name, sram in srams.items():
            m.submodules[name] = sram
        m.submodules.decoder = dec = Decoder()
        m.submodules.seq = seq = Sequencer(tile_m=cfg.tile_m, desc_beats=cfg.dram.desc_beats)
        m.submodules.dma = dma = Dma(
            beat_bits=cfg.dram.beat_bits, latency=cfg.dram.latency_cycles,
            dram_depth=cfg.dram.depth, x_bits=specs["xmem"].word_bits,
            w_bits=specs["wmem"].word_bits, i_bits=specs["idx"].word_bits,
            y_bits=cfg.block_k * ACC_BITS, x_depth=specs["xmem"].depth,
            w_depth=specs["wmem"].depth, i_depth=specs["idx"].depth,
            y_depth=specs["ymem"].depth, tile_m=cfg.tile_m,
            words_per_block=cfg.words_per_block)
        m.submodules.comp = comp = TileCompute(block_k=cfg.block_k, block_n=cfg.block_n,
                                               tile_m=cfg.tile_m, index_bits=cfg.index_bits)
        m.submodules.weights = wbuf = WeightBuffer(words=cfg.words_per_block,
                                                   word_bits=specs["wmem"].word_bits)
        m.submodules.pe_array = array = PEArray(rows=cfg.block_k, cols=cfg.block_n)
        m.submodules.acc = acc = AccumulatorBanks(rows=cfg.tile_m, lanes=cfg.block_k,
                                                  psum_bits=array.psum_bits, width=ACC_BITS)
        m.submodules.counters = ctrs = PerfCounters(count=len(isa.COUNTERS),
                                                    width=cfg.counter_bits, inc_bits=16,
                                                    read_ports=2, sel_bits=32)
        running, retire, fetch = self._front_end(m, cfg, srams, dec, seq, ctrs)
        self._wire_units(m, seq, dma, comp)
        self._datapath(m, cfg, srams, seq, dma, comp, wbuf, array, acc)
        self._counters(m, cfg, ctrs, running, retire, fetch, seq, dma, comp)
        return m

    # ---- front-end ----------------------------------------------------------------------------

    def _front_end(self, m, cfg, srams, dec, seq, ctrs):
        imem_depth = cfg.memories["imem"].depth
        pc = Signal(range(imem_depth + 1))
        regs = [Signal(32, name=f"x{r}") for r in range(1, 32)]
        regfile = Array([Const(0, 32)] + regs)
        desc_base, n_tiles = Signal(32), Signal(32)
        error, err_code, done = Signal(), Signal(3), Signal()
        fetch, retire, running = Signal(), Signal(), Signal()
        rs1_val, rs2_val = Signal(32), Signal(32)
        imem = srams["imem"]
        m.d.comb += [
            dec.insn.eq(imem.rdata), rs1_val.eq(regfile[dec.rs1]), rs2_val.eq(regfile[dec.rs2]),
            ctrs.read_sel[1].eq(rs1_val), ctrs.read_sel[0].eq(self.ctr_sel),
            self.ctr_value.eq(ctrs.read_value[0]), self.reg_value.eq(regfile[self.reg_sel]),
            seq.desc_base.eq(desc_base), seq.n_tiles.eq(n_tiles),
            imem.raddr.eq(Mux(running, pc[:imem.addr_bits], 0)),
            imem.waddr.eq(self.imem_addr), imem.wdata.eq(self.imem_wdata),
            imem.we.eq(self.imem_we & ~running),
        ]

        def write_rd(value):
            with m.Switch(dec.rd):
                for r in range(1, 32):
                    with m.Case(r):
                        m.d.sync += regs[r - 1].eq(value)

        def stop(code):
            m.d.sync += [error.eq(code != 0), err_code.eq(code), done.eq(1)]
            m.next = "IDLE"

        kind = isa.OpKind
        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [pc.eq(0), error.eq(0), err_code.eq(0), done.eq(0),
                                 desc_base.eq(0), n_tiles.eq(0)]
                    m.d.sync += [r.eq(0) for r in regs]
                    m.d.comb += ctrs.clear.eq(1)
                    m.next = "FETCH"
            with m.State("FETCH"):
                with m.If(pc >= imem_depth):
                    stop(int(isa.ErrorCode.PC_OVERFLOW))
                with m.Else():
                    m.d.comb += fetch.eq(1)
                    m.next = "EXECUTE"
            with m.State("EXECUTE"):
                m.next = "FETCH"
                m.d.sync += pc.eq(pc + 1)
                m.d.comb += retire.eq(1)
                with m.If(dec.illegal):
                    m.d.comb += retire.eq(0)
                    stop(int(isa.ErrorCode.ILLEGAL_INSTRUCTION))
                with m.Else():
                    with m.Switch(dec.kind):
                        with m.Case(int(kind.LUI)):
                            write_rd(dec.imm_u)
                        with m.Case(int(kind.ADDI)):
                            write_rd(rs1_val + dec.imm_i)
                        with m.Case(int(kind.TILES)):
                            m.d.sync += [desc_base.eq(rs1_val), n_tiles.eq(rs2_val)]
                        with m.Case(int(kind.RDCTR)):
                            write_rd(ctrs.read_value[1][:32])
                        with m.Case(int(kind.GEMM)):
                            # retires when the GEMM completes (not if it faults)
                            m.d.comb += [seq.start.eq(1), retire.eq(0)]
                            m.next = "GEMM"
                        with m.Case(int(kind.HALT)):
                            stop(0)
                        # lsp.fence: nothing to wait for, lsp.gemm blocks the front-end.
            with m.State("GEMM"):
                with m.If(seq.error):
                    stop(seq.err_code)
                with m.Elif(seq.done):
                    m.d.comb += retire.eq(1)
                    m.next = "FETCH"
        m.d.comb += [running.eq(~fsm.ongoing("IDLE")), self.running.eq(running),
                     self.done.eq(done), self.error.eq(error), self.err_code.eq(err_code)]
        return running, retire, fetch

    # ---- sequencer <-> units ----------------------------------------------------------------

    def _wire_units(self, m, seq, dma, comp):
        m.d.comb += [
            dma.gemm_start.eq(seq.dma_gemm_start), dma.start.eq(seq.dma_start),
            dma.do_store.eq(seq.dma_do_store), dma.do_fetch.eq(seq.dma_do_fetch),
            dma.store_addr.eq(seq.dma_store_addr), dma.store_words.eq(seq.dma_store_words),
            dma.fetch_addr.eq(seq.dma_fetch_addr), dma.wfill_reset.eq(seq.dma_wfill_reset),
            seq.dma_busy.eq(dma.busy), seq.dma_last.eq(dma.last), seq.dma_error.eq(dma.error),
            seq.dma_err_code.eq(dma.err_code), seq.dma_swap_x.eq(dma.tile_swap_x),
            seq.dma_swap_w.eq(dma.tile_swap_w), seq.dma_swap_y.eq(dma.tile_swap_y),
            seq.dma_y.eq(dma.tile_y),
            comp.start.eq(seq.comp_start), seq.comp_busy.eq(comp.busy),
            seq.comp_last.eq(comp.last),
        ]
        for name in _FIELDS:
            m.d.comb += [getattr(seq, f"dma_{name}").eq(getattr(dma, f"tile_{name}")),
                         getattr(comp, name).eq(getattr(seq, f"comp_{name}"))]
        m.d.comb += [self.dram_addr.eq(dma.dram_addr), self.dram_re.eq(dma.dram_re),
                     self.dram_we.eq(dma.dram_we), self.dram_wdata.eq(dma.dram_wdata),
                     dma.dram_rdata.eq(self.dram_rdata)]

    # ---- memories and datapath -------------------------------------------------------------

    def _datapath(self, m, cfg, srams, seq, dma, comp, wbuf, array, acc):
        specs = cfg.memories
        banks = {n: [srams[bank_name(n, b)] for b in range(2)] for n in DATA_MEMORIES}
        sel = {"xmem": seq.cx, "wmem": seq.cw, "idx": seq.cw, "ymem": seq.cy}
        reads = {"xmem": comp.x_addr, "wmem": comp.w_addr, "idx": comp.idx_addr}
        writes = {"xmem": (dma.x_waddr, dma.x_wdata, dma.x_we),
                  "wmem": (dma.w_waddr, dma.w_wdata, dma.w_we),
                  "idx": (dma.i_waddr, dma.i_wdata, dma.i_we)}
        rdata = {}
        for name in ("xmem", "wmem", "idx"):
            spec = specs[name]
            waddr, wdata, we = writes[name]
            for b, sram in enumerate(banks[name]):
                fill = sel[name] != b
                m.d.comb += [sram.raddr.eq(_addr(reads[name], spec)),
                             sram.waddr.eq(_addr(waddr, spec)), sram.wdata.eq(wdata),
                             sram.we.eq(we & fill)]
            rdata[name] = Mux(sel[name], banks[name][1].rdata, banks[name][0].rdata)
        # YMEM: the compute bank drains (read, add, write); the other bank is stored and cleared
        yspec, ybits = specs["ymem"], cfg.block_k * ACC_BITS
        comp_y = Mux(seq.cy, banks["ymem"][1].rdata, banks["ymem"][0].rdata)
        store_y = Mux(seq.cy, banks["ymem"][0].rdata, banks["ymem"][1].rdata)
        old = Mux(comp_y[ybits], comp_y[:ybits], 0)
        lanes = [(acc.drain_data.word_select(k, ACC_BITS) + old.word_select(k, ACC_BITS))
                 [:ACC_BITS] for k in range(cfg.block_k)]
        drained = Cat(*lanes, Const(1, 1))
        for b, sram in enumerate(banks["ymem"]):
            mine = seq.cy == b
            m.d.comb += [
                sram.raddr.eq(_addr(Mux(mine, comp.y_raddr, dma.y_raddr), yspec)),
                sram.waddr.eq(_addr(Mux(mine, comp.y_waddr, dma.y_waddr), yspec)),
                sram.wdata.eq(Mux(mine, drained, 0)),
                sram.we.eq(Mux(mine, comp.y_we, dma.y_we)),
            ]
        m.d.comb += [
            dma.y_rdata.eq(store_y), comp.idx_data.eq(rdata["idx"]),
            wbuf.load.eq(_landed(m, comp.w_re)), wbuf.load_data.eq(rdata["wmem"]),
            wbuf.swap.eq(comp.swap), array.x.eq(rdata["xmem"]), array.w.eq(wbuf.active),
            acc.accumulate.eq(comp.mac), acc.acc_bank.eq(comp.mac_bank),
            acc.acc_row.eq(comp.mac_row), acc.psum.eq(array.psum),
            acc.drain.eq(comp.drain), acc.drain_bank.eq(comp.drain_bank),
            acc.drain_row.eq(comp.drain_row),
        ]

    def _counters(self, m, cfg, ctrs, running, retire, fetch, seq, dma, comp):
        b = cfg.dram.bytes_per_cycle
        inc = {
            "cycles": running, "busy": seq.busy, "compute": comp.mac, "fill": comp.fill,
            "dma_stall": dma.busy & ~comp.busy, "macs": Mux(comp.mac,
                                                            cfg.block_k * cfg.block_n, 0),
            "insns": retire, "imem_reads": fetch,
            "xmem_reads": comp.x_re, "xmem_writes": dma.x_we,
            "wmem_reads": comp.w_re, "wmem_writes": dma.w_we,
            "idx_reads": comp.idx_re, "idx_writes": dma.i_we,
            "ymem_reads": comp.y_re + dma.y_re, "ymem_writes": comp.y_we + dma.y_we,
            "dram_read_bytes": Mux(dma.dram_re, b, 0), "dram_write_bytes": Mux(dma.dram_we, b, 0),
            "dma_cycles": dma.busy, "tiles": seq.tile_start,
        }
        missing = [n for n in isa.COUNTERS if n not in inc]
        if missing:
            raise ValueError(f"the engine has no event for counter(s) {', '.join(missing)}")
        for i, name in enumerate(isa.COUNTERS):
            m.d.comb += ctrs.inc[i].eq(inc[name])


def _landed(m, read_enable):
    """A registered copy of a read enable: the read's data is on the SRAM port now."""
    landed = Signal()
    m.d.sync += landed.eq(read_enable)
    return landed
