"""The DMA: the DRAM side of a phase (``docs/hw.md`` §5, DMA micro-schedule).

In each phase it waits for the DRAM latency, then runs its operations back to back on the one
DRAM port: store the finished Y region from the store bank of YMEM (zeros for words whose valid
bit is clear, and clear them), fetch the next tile descriptor and check it, load that tile's X
tile, index segment (checked entry by entry) and W chunk into the fill banks. Any check that
fails stops the DMA with an error code; the phase then ends when its compute does.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from lsp_codesign.hwspec import DESC_BITS
from lsp_codesign.isa import SWAP_W, SWAP_X, SWAP_Y, DescField, ErrorCode

from ._params import check_int, check_pow2

__all__ = ["Dma"]

_TILE_FIELDS = ("tt", "kg", "ng", "r", "nnz")


def _lg(v: int) -> int:
    return v.bit_length() - 1


class Dma(wiring.Component):
    """DMA unit between DRAM (one beat of ``beat_bits`` per cycle) and the SRAM banks.

    Parameters
    ----------
    beat_bits : int
        DRAM beat (``8 * dram.bytes_per_cycle``).
    latency : int
        DRAM latency in cycles, waited once at the start of each phase's work.
    dram_depth : int
        DRAM beats.
    x_bits, w_bits, i_bits, y_bits : int
        Word widths of XMEM, WMEM, IDX and YMEM (YMEM: data bits, the valid bit is above them).
    x_depth, w_depth, i_depth, y_depth : int
        Words per bank.
    tile_m, words_per_block : int
        BM and wpb (for the range checks).

    Attributes
    ----------
    gemm_start : Signal(1), in
        A new ``lsp.gemm``: forget the previous tile's geometry and the W fill offset.
    start : Signal(1), in
        Begin the phase's work in the next cycle, with the job below (sampled now).
    do_store, do_fetch : Signal(1), in
    store_addr, store_words, fetch_addr : Signal(32), in
    wfill_reset : Signal(1), in
        With ``start``: the computing tile swapped W in, the fill offset restarts at 0.
    busy, last : Signal(1), out
    error : Signal(1), out
        The work stopped on an error (held until the next ``start``).
    err_code : Signal(3), out
    tile_* : out
        Flags and geometry of the descriptor decoded in this phase.
    dram_addr, dram_re, dram_we, dram_wdata, dram_rdata :
        The DRAM port (read data arrives the cycle after ``dram_re``).
    x_waddr, x_wdata, x_we, w_*, i_* :
        Writes into the fill banks of XMEM, WMEM and IDX.
    y_raddr, y_re, y_rdata, y_waddr, y_we :
        Reads and clears of the store bank of YMEM.
    """

    def __init__(self, *, beat_bits: int, latency: int, dram_depth: int, x_bits: int,
                 w_bits: int, i_bits: int, y_bits: int, x_depth: int, w_depth: int,
                 i_depth: int, y_depth: int, tile_m: int, words_per_block: int) -> None:
        self._b = check_pow2("beat_bits", beat_bits, minimum=32)
        if self._b > DESC_BITS:
            raise ValueError(f"beat_bits must be at most {DESC_BITS}, not {beat_bits!r}")
        self._lat = check_int("latency", latency, maximum=65535)
        self._dram_depth = check_int("dram_depth", dram_depth, minimum=2, maximum=1 << 32)
        self._w = {n: check_pow2(f"{n}_bits", v, minimum=8)
                   for n, v in (("x", x_bits), ("w", w_bits), ("i", i_bits), ("y", y_bits))}
        self._depth = {n: check_int(f"{n}_depth", v, minimum=2, maximum=1 << 24)
                       for n, v in (("x", x_depth), ("w", w_depth), ("i", i_depth),
                                    ("y", y_depth))}
        self._bm = check_pow2("tile_m", tile_m, minimum=4)
        self._wpb = check_pow2("words_per_block", words_per_block)
        ports = {"gemm_start": In(1), "start": In(1), "do_store": In(1), "do_fetch": In(1),
                 "store_addr": In(32), "store_words": In(32), "fetch_addr": In(32),
                 "wfill_reset": In(1), "busy": Out(1), "last": Out(1), "error": Out(1),
                 "err_code": Out(3)}
        ports.update({f"tile_{f}": Out(32) for f in _TILE_FIELDS})
        ports.update({"tile_swap_x": Out(1), "tile_swap_w": Out(1), "tile_swap_y": Out(1),
                      "tile_y": Out(32)})
        b = self._b
        ports.update({"dram_addr": Out(32), "dram_re": Out(1), "dram_we": Out(1),
                      "dram_wdata": Out(b), "dram_rdata": In(b)})
        for n in ("x", "w", "i"):
            ports.update({f"{n}_waddr": Out(32), f"{n}_wdata": Out(self._w[n]),
                          f"{n}_we": Out(1)})
        ports.update({"y_raddr": Out(32), "y_re": Out(1), "y_rdata": In(self._w["y"] + 1),
                      "y_waddr": Out(32), "y_we": Out(1)})
        super().__init__(ports)

    @property
    def desc_beats(self) -> int:
        return DESC_BITS // self._b

    def elaborate(self, platform):  # noqa: C901 - one FSM, phase by phase as the spec reads
        m = Module()
        b = self._b
        # ---- job, latched at start -------------------------------------------------------
        do_store, do_fetch = Signal(), Signal()
        store_addr, store_words, fetch_addr = Signal(32), Signal(32), Signal(32)
        prev = {f: Signal(32, name=f"prev_{f}") for f in _TILE_FIELDS}
        tile = {f: getattr(self, f"tile_{f}") for f in _TILE_FIELDS}
        wfill = Signal(32)
        err, code = Signal(), Signal(3)
        err_now, code_now = Signal(), Signal(3)     # an error found in this cycle
        m.d.comb += [self.error.eq(err | err_now), self.err_code.eq(Mux(err_now, code_now, code))]

        desc = Signal(DESC_BITS)
        f = {fld.name.lower(): desc.word_select(int(fld), 32) for fld in DescField}
        flags = f["flags"]
        swap_x, swap_w, swap_y = flags[_lg(SWAP_X)], flags[_lg(SWAP_W)], flags[_lg(SWAP_Y)]

        i = Signal(32)                  # cycle within the current operation
        end = Signal(32)                # its last cycle
        n_ld = Signal(32)               # words of the current load
        base = Signal(32)               # its DRAM beat
        off = Signal(32)                # its first SRAM word
        bad = Signal()                  # index rule broken so far
        prev_v = Signal(32)
        rule_now = Signal()             # the entry written this cycle breaks a rule

        def beats_of(words, bits):
            if bits >= b:
                return words << _lg(bits // b)
            sh = _lg(b // bits)
            return (words + (1 << sh) - 1) >> sh

        def op_end(words, bits):
            return words << _lg(bits // b) if bits >= b else words

        def in_dram(addr, words, bits):
            return (addr + beats_of(words, bits)) <= self._dram_depth

        # ---- decode checks (docs/hw.md §5) --------------------------------------------------
        bm_sh = _lg(self._bm)
        tt, kg, ng, r, nnz = (f[x] for x in _TILE_FIELDS)
        x_words = (tt * ng) << bm_sh
        i_words = 2 * r + 1 + nnz
        y_words = (tt * kg) << bm_sh
        bad_tile = ((tt == 0) | (kg == 0) | (ng == 0) | (r > kg) | (nnz < r) | (nnz > r * ng)
                    | (~swap_x & ((tt != prev["tt"]) | (ng != prev["ng"])))
                    | (~swap_w & ((kg != prev["kg"]) | (ng != prev["ng"]) | (r != prev["r"])
                                  | (nnz != prev["nnz"])))
                    | (~swap_y & ((tt != prev["tt"]) | (kg != prev["kg"]))))
        d = self._depth
        bad_range = ((swap_x & ((x_words > d["x"]) | ~in_dram(f["x"], x_words, self._w["x"])))
                     | (swap_w & ((i_words > d["i"]) | ((nnz << _lg(self._wpb)) > d["w"])
                                  | ~in_dram(f["idx"], i_words, self._w["i"])))
                     | (swap_y & ((y_words > d["y"]) | ~in_dram(f["y"], y_words,
                                                                 self._w["y"])))
                     | ((f["wlen"] != 0) & (((wfill + f["wlen"]) > d["w"])
                                            | ~in_dram(f["w"], f["wlen"], self._w["w"]))))

        lat = Signal(range(self._lat + 1))

        def finish():
            """The DMA's last cycle: the next phase may start its work right away."""
            m.d.comb += self.last.eq(1)
            with m.If(self.start & (self.do_store | self.do_fetch)):
                m.d.sync += lat.eq(0)
                m.next = "LAT"
            with m.Else():
                m.next = "IDLE"

        def stop(err_code):
            m.d.sync += [err.eq(1), code.eq(err_code)]
            m.d.comb += [err_now.eq(1), code_now.eq(err_code)]
            finish()

        def begin_load(state, words, dram, sram_off, bits):
            m.d.sync += [i.eq(0), n_ld.eq(words), base.eq(dram), off.eq(sram_off),
                         end.eq(op_end(words, bits)), bad.eq(0)]
            m.next = state

        def after_decode():
            with m.If(swap_x):
                begin_load("LDX", x_words, f["x"], 0, self._w["x"])
            with m.Elif(swap_w):
                begin_load("LDI", i_words, f["idx"], 0, self._w["i"])
            with m.Elif(f["wlen"] != 0):
                begin_load("LDW", f["wlen"], f["w"], wfill, self._w["w"])
            with m.Else():
                finish()

        def after_ldx():
            with m.If(swap_w):
                begin_load("LDI", i_words, f["idx"], 0, self._w["i"])
            with m.Elif(f["wlen"] != 0):
                begin_load("LDW", f["wlen"], f["w"], wfill, self._w["w"])
            with m.Else():
                finish()

        def after_ldi():
            with m.If(f["wlen"] != 0):
                begin_load("LDW", f["wlen"], f["w"], wfill, self._w["w"])
            with m.Else():
                finish()

        def begin_fetch():
            m.d.sync += [i.eq(0), end.eq(self.desc_beats)]
            m.next = "FETCH"

        # ---- the load datapath: DRAM beats into words of one bank ---------------------------
        def load_path(bits, word_sink):
            """Issue this cycle's DRAM read and write the word that lands, for width ``bits``."""
            arrived = Signal(name=f"arrived_{bits}")
            m.d.sync += arrived.eq(self.dram_re)
            if bits >= b:
                k = bits // b
                with m.If(i < end):
                    m.d.comb += [self.dram_re.eq(1), self.dram_addr.eq(base + i)]
                if k > 1:
                    asm = Signal(bits - b, name=f"asm_{bits}")
                    with m.If(arrived):
                        m.d.sync += asm.eq(Cat(asm[b:], self.dram_rdata))
                    word = Cat(asm, self.dram_rdata)
                else:
                    word = self.dram_rdata
                done_word = arrived & (i[:_lg(k)] == 0) if k > 1 else arrived
                word_sink(done_word, off + (i >> _lg(k)) - 1, word)
            else:
                k = b // bits
                held = Signal(b, name=f"held_{bits}")
                with m.If((i < end) & (i[:_lg(k)] == 0)):
                    m.d.comb += [self.dram_re.eq(1), self.dram_addr.eq(base + (i >> _lg(k)))]
                beat = Mux(arrived, self.dram_rdata, held)
                m.d.sync += held.eq(beat)
                v = i - 1
                word = beat.word_select(v[:_lg(k)], bits)
                word_sink(i != 0, off + v, word)

        def sink(prefix):
            def write(en, addr, word):
                m.d.comb += [getattr(self, f"{prefix}_we").eq(en),
                             getattr(self, f"{prefix}_waddr").eq(addr),
                             getattr(self, f"{prefix}_wdata").eq(word)]
            return write

        def index_sink(en, addr, word):
            sink("i")(en, addr, word)
            e = addr                      # entry number (the segment starts at 0)
            v = word
            rule = Mux(e == 0, v != 0,
                       Mux(e <= tile["r"],
                           (v <= prev_v) | ((e == tile["r"]) & (v != tile["nnz"])),
                           Mux(e <= 2 * tile["r"],
                               (v >= tile["kg"]) | ((e > tile["r"] + 1) & (v <= prev_v)),
                               v >= tile["ng"])))
            m.d.comb += rule_now.eq(en & rule)
            with m.If(en):
                m.d.sync += prev_v.eq(v)
                with m.If(rule):
                    m.d.sync += bad.eq(1)

        # ---- the FSM ----------------------------------------------------------------------
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start & (self.do_store | self.do_fetch)):
                    m.d.sync += lat.eq(0)
                    m.next = "LAT"
            with m.State("LAT"):
                m.d.comb += self.busy.eq(1)
                with m.If(lat == self._lat - 1):
                    with m.If(do_store):
                        m.d.sync += [i.eq(0), end.eq(op_end(store_words, self._w["y"]))]
                        m.next = "STORE"
                    with m.Else():
                        begin_fetch()
                with m.Else():
                    m.d.sync += lat.eq(lat + 1)
            with m.State("STORE"):
                m.d.comb += self.busy.eq(1)
                self._store_path(m, i, end, store_addr)
                with m.If(i == end):
                    with m.If(do_fetch):
                        begin_fetch()
                    with m.Else():
                        finish()
                with m.Else():
                    m.d.sync += i.eq(i + 1)
            with m.State("FETCH"):
                m.d.comb += self.busy.eq(1)
                with m.If((i == 0) & ((fetch_addr + self.desc_beats) > self._dram_depth)):
                    stop(int(ErrorCode.DMA_RANGE))
                with m.Else():
                    arrived = Signal()
                    m.d.sync += arrived.eq(self.dram_re)
                    with m.If(i < end):
                        m.d.comb += [self.dram_re.eq(1), self.dram_addr.eq(fetch_addr + i)]
                    with m.If(arrived):
                        m.d.sync += desc.eq(Cat(desc[b:], self.dram_rdata) if b < DESC_BITS
                                            else self.dram_rdata)
                    with m.If(i == end):
                        m.next = "DECODE"
                    with m.Else():
                        m.d.sync += i.eq(i + 1)
            with m.State("DECODE"):
                m.d.comb += self.busy.eq(1)
                with m.If(bad_tile):
                    stop(int(ErrorCode.BAD_TILE))
                with m.Elif(bad_range):
                    stop(int(ErrorCode.DMA_RANGE))
                with m.Else():
                    m.d.sync += [tile[x].eq(f[x]) for x in _TILE_FIELDS]
                    m.d.sync += [prev[x].eq(f[x]) for x in _TILE_FIELDS]
                    m.d.sync += [self.tile_swap_x.eq(swap_x), self.tile_swap_w.eq(swap_w),
                                 self.tile_swap_y.eq(swap_y), self.tile_y.eq(f["y"])]
                    after_decode()
            for state, prefix, bits, then in (("LDX", "x", self._w["x"], after_ldx),
                                              ("LDI", "i", self._w["i"], after_ldi),
                                              ("LDW", "w", self._w["w"], None)):
                with m.State(state):
                    m.d.comb += self.busy.eq(1)
                    if prefix == "i":
                        load_path(bits, index_sink)
                    else:
                        load_path(bits, sink(prefix))
                    with m.If(i == end):
                        if prefix == "i":
                            with m.If(bad | rule_now):
                                stop(int(ErrorCode.INDEX))
                            with m.Else():
                                then()
                        elif prefix == "w":
                            m.d.sync += wfill.eq(wfill + n_ld)
                            finish()
                        else:
                            then()
                    with m.Else():
                        m.d.sync += i.eq(i + 1)

        # a new phase's job and a new GEMM's reset come last: they win over the FSM's updates
        with m.If(self.start):
            m.d.sync += [do_store.eq(self.do_store), do_fetch.eq(self.do_fetch),
                         store_addr.eq(self.store_addr), store_words.eq(self.store_words),
                         fetch_addr.eq(self.fetch_addr), err.eq(0), code.eq(0)]
            with m.If(self.wfill_reset):
                m.d.sync += wfill.eq(0)
        with m.If(self.gemm_start):
            m.d.sync += [p.eq(0) for p in prev.values()] + [wfill.eq(0)]
        return m

    def _store_path(self, m, i, end, addr):
        """Y words of the store bank -> DRAM beats, zeros for invalid words, clearing them."""
        b, w = self._b, self._w["y"]
        arrived = Signal()
        data = Mux(self.y_rdata[w], self.y_rdata[:w], 0)
        if w >= b:
            k = w // b
            held = Signal(w)
            sub = i - 1
            with m.If((i < end) & ((i[:_lg(k)] == 0) if k > 1 else Const(1))):
                m.d.comb += [self.y_re.eq(1), self.y_raddr.eq(i >> _lg(k))]
            m.d.sync += arrived.eq(self.y_re)
            word = Mux(arrived, data, held)
            m.d.sync += held.eq(word)
            with m.If(i != 0):
                m.d.comb += [self.dram_we.eq(1), self.dram_addr.eq(addr + sub),
                             self.dram_wdata.eq(word.word_select(sub[:_lg(k)], b)
                                                if k > 1 else word)]
            with m.If(arrived):
                m.d.comb += [self.y_we.eq(1), self.y_waddr.eq(sub >> _lg(k))]
        else:
            k = b // w
            elems = [Signal(w, name=f"pack{e}") for e in range(k)]
            with m.If(i < end):
                m.d.comb += [self.y_re.eq(1), self.y_raddr.eq(i)]
            m.d.sync += arrived.eq(self.y_re)
            v = i - 1
            pos = v[:_lg(k)]
            beat = Cat(*(Mux(pos == e, data, elems[e]) for e in range(k)))
            with m.If(arrived):
                m.d.comb += [self.y_we.eq(1), self.y_waddr.eq(v)]
                for e in range(k):
                    with m.If(pos == e):
                        m.d.sync += elems[e].eq(data)
                with m.If((pos == k - 1) | (i == end)):
                    m.d.comb += [self.dram_we.eq(1), self.dram_addr.eq(addr + (v >> _lg(k))),
                                 self.dram_wdata.eq(beat)]
                    m.d.sync += [el.eq(0) for el in elems]
