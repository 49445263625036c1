"""The top of the block-sparse engine: command front-end, GEMM datapath, memories, host port.

Everything here follows ``docs/hw.md``; every size comes from the one
:class:`~lsp_codesign.config.HwConfig` the top is built from, and the leaf modules take plain
integers derived from it.

::

    IMEM ─► front-end (fetch, decode, x0..x31, config registers) ── lsp.gemm ─► BlockWalker
    IDX/XMEM/WMEM ─► WeightBuffer ─► PEArray (BK x BN) ─► AccumulatorBank (BM x BK) ─► YMEM
    host port (load / read back any memory while idle), counter port, register port

Front-end timing: every instruction takes a FETCH cycle (IMEM read of ``pc``) and an EXECUTE
cycle; ``lsp.gemm`` then holds the front-end while the walker is busy. Choices the spec leaves
open (``docs/rtl.md``): ``lsp.gemm`` retires when its GEMM completes (not when it faults);
``lsp.rdctr`` reads a counter as it was at the start of its execute cycle, low 32 bits;
``pc_overflow`` is raised in the FETCH cycle whose ``pc`` equals the IMEM depth; registers and
configuration registers keep their values across runs (``rst`` clears them, ``start`` does
not).
"""

from __future__ import annotations

from amaranth import Array, Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from lsp_codesign import isa
from lsp_codesign.config import ACC_BITS, HwConfig

from .buffers import AccumulatorBank, WeightBuffer
from .counters import PerfCounters
from .decoder import Decoder
from .memories import Sram
from .pe_array import PEArray
from .walker import BlockWalker

__all__ = ["Engine", "MEMORY_ORDER", "TOP_NAME"]

#: Memories in ``host_sel`` order (``docs/hw.md`` section 7).
MEMORY_ORDER = ("imem", "xmem", "wmem", "idx", "ymem")
#: Name of the generated Verilog top module.
TOP_NAME = "lsp_engine"
#: The custom-0 operations the front-end executes (checked against lsp_codesign.isa.OPS).
_IMPLEMENTED_OPS = frozenset({"lsp.dim_mn", "lsp.dim_k", "lsp.base_xw", "lsp.base_y",
                              "lsp.base_idx", "lsp.nnz", "lsp.gemm", "lsp.fence", "lsp.rdctr",
                              "lsp.halt"})


def _wrap(addr, depth: int, bits: int):
    """``addr mod depth`` on the memory's address width (a slice when depth is a power of 2)."""
    if depth & (depth - 1) == 0:
        return addr[:bits]
    return (addr % depth)[:bits]


class Engine(wiring.Component):
    """Block-sparse GEMM engine built from a :class:`~lsp_codesign.config.HwConfig`.

    Parameters
    ----------
    config : HwConfig
        A ``block_sparse`` configuration: block ``BK x BN``, tile ``BM``, memories, index width.

    Attributes
    ----------
    start : Signal(1), in
        One-cycle pulse while idle: clear the counters and the error, ``pc`` <- 0, run.
    running : Signal(1), out
        High from the cycle after ``start`` until the halt or error cycle (inclusive).
    done : Signal(1), out
        High after a halt or an error, until the next ``start``.
    error : Signal(1), out
        The run stopped on an error.
    err_code : Signal(3), out
        Cause, numbered as :data:`lsp_codesign.isa.ERRORS`.
    host_sel : Signal(3), in
        Memory of the host port: 0 IMEM, 1 XMEM, 2 WMEM, 3 IDX, 4 YMEM.
    host_addr : Signal(host_addr_bits), in
        Word address (wrapped to the selected memory's depth).
    host_wdata : Signal(host_word_bits), in
        Write data; the low bits of the selected memory's word width are used.
    host_we : Signal(1), in
        Write ``host_wdata`` at ``host_addr`` of ``host_sel`` (ignored while running).
    host_rdata : Signal(host_word_bits), out
        Word at the ``host_addr`` / ``host_sel`` presented in the previous cycle.
    ctr_sel : Signal(4), in
        Counter number (:data:`lsp_codesign.isa.COUNTERS`).
    ctr_value : Signal(counter_bits), out
        Value of counter ``ctr_sel`` (zero for a number with no counter).
    reg_sel : Signal(5), in
        Register number.
    reg_value : Signal(32), out
        Value of register ``x[reg_sel]``.
    """

    def __init__(self, *, config: HwConfig) -> None:
        if not isinstance(config, HwConfig):
            raise TypeError(f"config must be an HwConfig, not {config!r}")
        if config.engine != "block_sparse":
            raise ValueError(f"config {config.name!r} has engine {config.engine!r}; the RTL "
                             "implements the block_sparse engine only")
        ops = {op.mnemonic for op in isa.OPS}
        if ops != _IMPLEMENTED_OPS:
            raise ValueError(f"the ISA and the engine differ: no RTL for "
                             f"{sorted(ops - _IMPLEMENTED_OPS)}, no ISA entry for "
                             f"{sorted(_IMPLEMENTED_OPS - ops)}")
        if len(isa.COUNTERS) > 16:
            raise ValueError(f"ctr_sel is 4 bits but the ISA has {len(isa.COUNTERS)} counters")
        self._config = config
        mems = config.memories
        self._host_addr_bits = max(mems[n].addr_bits for n in MEMORY_ORDER)
        self._host_word_bits = max(mems[n].word_bits for n in MEMORY_ORDER)
        super().__init__({
            "start": In(1),
            "running": Out(1),
            "done": Out(1),
            "error": Out(1),
            "err_code": Out(3),
            "host_sel": In(3),
            "host_addr": In(self._host_addr_bits),
            "host_wdata": In(self._host_word_bits),
            "host_we": In(1),
            "host_rdata": Out(self._host_word_bits),
            "ctr_sel": In(4),
            "ctr_value": Out(config.counter_bits),
            "reg_sel": In(5),
            "reg_value": Out(32),
        })

    @property
    def config(self) -> HwConfig:
        return self._config

    @property
    def host_addr_bits(self) -> int:
        return self._host_addr_bits

    @property
    def host_word_bits(self) -> int:
        return self._host_word_bits

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        bk, bn, bm = cfg.block_k, cfg.block_n, cfg.tile_m
        specs = cfg.memories

        # ---- leaf modules ----------------------------------------------------------------
        srams = {}
        for name in MEMORY_ORDER:
            srams[name] = Sram(width=specs[name].word_bits, depth=specs[name].depth)
            m.submodules[name] = srams[name]
        m.submodules.decoder = dec = Decoder()
        m.submodules.walker = walker = BlockWalker(block_k=bk, block_n=bn, tile_m=bm,
                                                   index_bits=cfg.index_bits)
        m.submodules.weights = wbuf = WeightBuffer(rows=bk, cols=bn)
        m.submodules.pe_array = array = PEArray(rows=bk, cols=bn)
        m.submodules.acc = acc = AccumulatorBank(rows=bm, lanes=bk, psum_bits=array.psum_bits,
                                                 width=ACC_BITS)
        weight_of = {"macs": bk * bn}
        m.submodules.counters = ctrs = PerfCounters(
            weights=tuple(weight_of.get(n, 1) for n in isa.COUNTERS),
            width=cfg.counter_bits, read_ports=2, sel_bits=32)

        # ---- front-end state ---------------------------------------------------------------
        imem_depth = specs["imem"].depth
        pc = Signal(range(imem_depth + 1))
        regs = [Signal(32, name=f"x{r}") for r in range(1, 32)]
        regfile = Array([Const(0, 32)] + regs)
        conf = {name: Signal(32, name=f"cfg_{name}") for name in
                ("m", "n", "k", "nnz", "x_base", "w_base", "y_base", "rp_base", "ci_base")}
        error, err_code, done = Signal(), Signal(3), Signal()
        fetch, retire, running = Signal(), Signal(), Signal()
        rs1_val, rs2_val = Signal(32), Signal(32)
        m.d.comb += [
            dec.insn.eq(srams["imem"].rdata),
            rs1_val.eq(regfile[dec.rs1]),
            rs2_val.eq(regfile[dec.rs2]),
            ctrs.read_sel[1].eq(rs1_val),
            ctrs.read_sel[0].eq(self.ctr_sel),
            self.ctr_value.eq(ctrs.read_value[0]),
            self.reg_value.eq(regfile[self.reg_sel]),
        ]
        for name, sig in conf.items():
            m.d.comb += getattr(walker, name).eq(sig)

        def write_rd(value):
            with m.Switch(dec.rd):
                for r in range(1, 32):
                    with m.Case(r):
                        m.d.sync += regs[r - 1].eq(value)

        def stop(code):
            m.d.sync += [error.eq(int(code != 0)), err_code.eq(code), done.eq(1)]
            m.next = "IDLE"

        kind = dec.kinds
        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [pc.eq(0), error.eq(0), err_code.eq(0), done.eq(0)]
                    m.d.comb += ctrs.clear.eq(1)
                    m.next = "FETCH"
            with m.State("FETCH"):
                with m.If(pc >= imem_depth):
                    stop(isa.ERROR_CODES["pc_overflow"])
                with m.Else():
                    m.d.comb += fetch.eq(1)
                    m.next = "EXECUTE"
            with m.State("EXECUTE"):
                m.next = "FETCH"
                m.d.sync += pc.eq(pc + 1)
                m.d.comb += retire.eq(1)
                with m.If(dec.illegal):
                    m.d.comb += retire.eq(0)
                    stop(isa.ERROR_CODES["illegal_instruction"])
                with m.Else():
                    with m.Switch(dec.kind):
                        with m.Case(kind["lui"]):
                            write_rd(dec.imm_u)
                        with m.Case(kind["addi"]):
                            write_rd(rs1_val + dec.imm_i)
                        with m.Case(kind["lsp.dim_mn"]):
                            m.d.sync += [conf["m"].eq(rs1_val), conf["n"].eq(rs2_val)]
                        with m.Case(kind["lsp.dim_k"]):
                            m.d.sync += conf["k"].eq(rs1_val)
                        with m.Case(kind["lsp.base_xw"]):
                            m.d.sync += [conf["x_base"].eq(rs1_val), conf["w_base"].eq(rs2_val)]
                        with m.Case(kind["lsp.base_y"]):
                            m.d.sync += conf["y_base"].eq(rs1_val)
                        with m.Case(kind["lsp.base_idx"]):
                            m.d.sync += [conf["rp_base"].eq(rs1_val),
                                         conf["ci_base"].eq(rs2_val)]
                        with m.Case(kind["lsp.nnz"]):
                            m.d.sync += conf["nnz"].eq(rs1_val)
                        with m.Case(kind["lsp.rdctr"]):
                            write_rd(ctrs.read_value[1][:32])
                        with m.Case(kind["lsp.gemm"]):
                            with m.If((conf["m"] == 0) | (conf["n"] == 0) | (conf["k"] == 0)):
                                m.d.comb += retire.eq(0)
                                stop(isa.ERROR_CODES["bad_dims"])
                            with m.Else():
                                # Retires when the GEMM completes (not if it faults).
                                m.d.comb += [walker.start.eq(1), retire.eq(0)]
                                m.next = "GEMM"
                        with m.Case(kind["lsp.halt"]):
                            stop(0)
                        # lsp.fence: nothing to wait for, lsp.gemm blocks the front-end.
            with m.State("GEMM"):
                with m.If(walker.error):
                    stop(isa.ERROR_CODES["index"])
                with m.Elif(walker.done):
                    m.d.comb += retire.eq(1)
                    m.next = "FETCH"
        m.d.comb += [
            running.eq(~fsm.ongoing("IDLE")),
            self.running.eq(running),
            self.done.eq(done),
            self.error.eq(error),
            self.err_code.eq(err_code),
        ]

        # ---- datapath ------------------------------------------------------------------------
        mac = Signal()      # XMEM data of a token row arrives: multiply and accumulate
        w_land = Signal()   # WMEM data of a block row arrives: shift into the shadow buffer
        m.d.sync += [mac.eq(walker.x_re), w_land.eq(walker.w_re)]
        m.d.comb += [
            walker.idx_data.eq(srams["idx"].rdata),
            wbuf.load.eq(w_land),
            wbuf.load_data.eq(srams["wmem"].rdata),
            wbuf.swap.eq(walker.swap),
            array.x.eq(srams["xmem"].rdata),
            array.w.eq(wbuf.active),
            acc.accumulate.eq(mac),
            acc.psum.eq(array.psum),
            acc.drain.eq(walker.y_we),
        ]

        # ---- memory ports: the engine while running, the host port while idle --------------
        engine_read = {"imem": pc, "xmem": walker.x_addr, "wmem": walker.w_addr,
                       "idx": walker.idx_addr}
        host_sel_q = Signal(3)
        m.d.sync += host_sel_q.eq(self.host_sel)
        rdata = Array([srams[n].rdata for n in MEMORY_ORDER] + [Const(0, 1)] * 3)
        m.d.comb += self.host_rdata.eq(rdata[host_sel_q])
        for sel, name in enumerate(MEMORY_ORDER):
            sram, spec = srams[name], specs[name]
            host_addr = _wrap(self.host_addr, spec.depth, spec.addr_bits)
            with m.If(running):
                if name in engine_read:
                    m.d.comb += sram.raddr.eq(_wrap(engine_read[name], spec.depth,
                                                    spec.addr_bits))
                else:
                    m.d.comb += [
                        sram.waddr.eq(_wrap(walker.y_addr, spec.depth, spec.addr_bits)),
                        sram.wdata.eq(acc.head),
                        sram.we.eq(walker.y_we),
                    ]
            with m.Else():
                m.d.comb += [
                    sram.raddr.eq(host_addr),
                    sram.waddr.eq(host_addr),
                    sram.wdata.eq(self.host_wdata[:spec.word_bits]),
                    sram.we.eq(self.host_we & (self.host_sel == sel)),
                ]

        # ---- performance counters (numbered as isa.COUNTERS) --------------------------------
        events = {
            "cycles": running,
            "busy": walker.busy,
            "compute": mac,
            "stall": walker.stall,
            "macs": mac,
            "insns": retire,
            "imem_reads": fetch,
            "xmem_reads": walker.x_re,
            "wmem_reads": walker.w_re,
            "idx_reads": walker.idx_re,
            "ymem_writes": walker.y_we,
        }
        missing = [n for n in isa.COUNTERS if n not in events]
        if missing:
            raise ValueError(f"the engine has no event for counter(s) {', '.join(missing)}")
        for bit, name in enumerate(isa.COUNTERS):
            m.d.comb += ctrs.event[bit].eq(events[name])
        return m
