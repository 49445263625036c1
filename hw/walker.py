"""The GEMM sequencer: walks the block index and drives every memory access of one ``lsp.gemm``.

It implements the loop order and the cycle formula of ``docs/hw.md`` section 5 exactly::

    busy = 1 + BK*[NNZ > 0] + MT * (NNZ * D + KB * (BM + 1)),   D = max(BM, BK)

in four phases: SETUP (1 cycle, reads ``row_ptr[1]``), FILL (BK cycles when NNZ > 0: the first
kept block's rows and its column index), one STEP of D cycles per kept block per token tile,
and one DRAIN of BM + 1 cycles per block row per tile. Only the kept blocks listed in the index
are visited, so pruned blocks are never fetched or multiplied.

The walker trusts ``NNZ`` to know where the block sequence wraps, and never visits more than
NNZ blocks in a tile (so a corrupt index cannot make it run longer than the formula with NNZ).
At the end of each token tile it raises ``error`` (``index``, ``docs/hw.md`` section 4) when the
blocks it visited differ from NNZ or when a row pointer it read exceeded NNZ.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ._params import check_int, check_pow2

__all__ = ["BlockWalker"]


class BlockWalker(wiring.Component):
    """Block-index walker and GEMM sequencer of the block-sparse engine.

    Parameters
    ----------
    block_k : int
        BK, rows of a pruning block (output features); a power of two >= 2.
    block_n : int
        BN, columns of a pruning block (input features); a power of two >= 2.
    tile_m : int
        BM, tokens per activation tile; a power of two >= 2.
    index_bits : int
        Width of one IDX entry (row pointer or column index).

    Attributes
    ----------
    start : Signal(1), in
        Pulse (the ``lsp.gemm`` execute cycle): SETUP follows. Ignored while busy.
    m, n, k, nnz : Signal(32), in
        GEMM shape and kept blocks; nonzero M, N, K. Held stable while busy.
    x_base, w_base, y_base, rp_base, ci_base : Signal(32), in
        Base addresses (words / entries); held stable while busy.
    busy : Signal(1), out
        A GEMM cycle (SETUP, FILL, STEP or DRAIN).
    done : Signal(1), out
        The last busy cycle of a GEMM that completed.
    error : Signal(1), out
        The last busy cycle of a GEMM that stopped on an index error.
    idx_addr : Signal(32), out
        IDX entry to read (valid with ``idx_re``).
    idx_re : Signal(1), out
        An IDX read is issued this cycle.
    idx_data : Signal(index_bits), in
        IDX read data, one cycle after the read.
    x_addr, w_addr : Signal(32), out
        XMEM / WMEM word to read (valid with ``x_re`` / ``w_re``).
    x_re, w_re : Signal(1), out
        An XMEM / WMEM read is issued this cycle (its data feeds the array / the shadow buffer
        in the next cycle).
    y_addr : Signal(32), out
        YMEM word written (valid with ``y_we``).
    y_we : Signal(1), out
        Write the head accumulator row to ``y_addr`` (and clear it).
    swap : Signal(1), out
        First cycle of a block step: the shadow block becomes active at its end.
    stall : Signal(1), out
        The array waits for weights (FILL, and block-step cycles past BM).
    """

    def __init__(self, *, block_k: int, block_n: int, tile_m: int, index_bits: int) -> None:
        self._block_k = check_pow2("block_k", block_k)
        self._block_n = check_pow2("block_n", block_n)
        self._tile_m = check_pow2("tile_m", tile_m)
        self._index_bits = check_int("index_bits", index_bits, minimum=8, maximum=32)
        ports = {"start": In(1)}
        for name in ("m", "n", "k", "nnz", "x_base", "w_base", "y_base", "rp_base", "ci_base"):
            ports[name] = In(32)
        ports.update({
            "busy": Out(1), "done": Out(1), "error": Out(1),
            "idx_addr": Out(32), "idx_re": Out(1), "idx_data": In(self._index_bits),
            "x_addr": Out(32), "x_re": Out(1),
            "w_addr": Out(32), "w_re": Out(1),
            "y_addr": Out(32), "y_we": Out(1),
            "swap": Out(1), "stall": Out(1),
        })
        super().__init__(ports)

    @property
    def block_k(self) -> int:
        return self._block_k

    @property
    def block_n(self) -> int:
        return self._block_n

    @property
    def tile_m(self) -> int:
        return self._tile_m

    @property
    def index_bits(self) -> int:
        return self._index_bits

    @property
    def step_cycles(self) -> int:
        """D = max(BM, BK): cycles of one block step."""
        return max(self._tile_m, self._block_k)

    def elaborate(self, platform):
        m = Module()
        bk, bn, bm = self._block_k, self._block_n, self._tile_m
        d = self.step_cycles
        lg_bk, lg_bn, lg_bm = bk.bit_length() - 1, bn.bit_length() - 1, bm.bit_length() - 1

        # Geometry of the GEMM (the inputs are stable while busy).
        mt, kb, nb = Signal(32), Signal(32), Signal(32)
        m.d.comb += [
            mt.eq((self.m + (bm - 1)) >> lg_bm),
            kb.eq((self.k + (bk - 1)) >> lg_bk),
            nb.eq((self.n + (bn - 1)) >> lg_bn),
        ]

        t = Signal(32)        # token tile
        i = Signal(32)        # block row
        q = Signal(32)        # kept block of the current step = blocks visited in this tile
        c = Signal(range(max(d, bm + 1, bk)))   # cycle within the phase
        row_end = Signal(32)  # row_ptr[i + 1]: end of the current (or next) block row
        next_col = Signal(32)  # column index of the next block to step over
        rp_over = Signal()    # a row pointer read exceeded NNZ
        x_tile, y_tile = Signal(32), Signal(32)   # XMEM / YMEM word of the tile's token 0
        x_run, y_run, w_run = Signal(32), Signal(32), Signal(32)
        land_rp, land_ci = Signal(), Signal()     # IDX data arriving: a row pointer / column

        # Index reads land one cycle after they are issued.
        m.d.sync += [land_rp.eq(0), land_ci.eq(0)]
        with m.If(land_rp):
            m.d.sync += row_end.eq(self.idx_data)
            with m.If(self.idx_data > self.nnz):
                m.d.sync += rp_over.eq(1)
        with m.If(land_ci):
            m.d.sync += next_col.eq(self.idx_data)

        def read_row_ptr(entry):
            m.d.comb += [self.idx_addr.eq(self.rp_base + entry), self.idx_re.eq(1)]
            m.d.sync += land_rp.eq(1)

        def read_col_idx(entry):
            m.d.comb += [self.idx_addr.eq(self.ci_base + entry), self.idx_re.eq(1)]
            m.d.sync += land_ci.eq(1)

        def blocks_left(visited):
            # Does the current block row still hold a kept block to visit?
            return (visited < row_end) & (visited < self.nnz)

        last_tile = (t + 1) >= mt
        q1 = Signal(32)
        m.d.comb += q1.eq(q + 1)
        wraps = q1 >= self.nnz                 # next block of the sequence is block 0
        has_next = ~wraps | ~last_tile         # ... and there is one
        nxt = Mux(wraps, 0, q1)

        def load_weight_row(first):
            # Row of the next block; the sequence restarts at w_base when it wraps to block 0.
            addr = Mux(first, self.w_base, w_run)
            m.d.comb += [self.w_addr.eq(addr), self.w_re.eq(1)]
            m.d.sync += w_run.eq(addr + 1)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [t.eq(0), i.eq(0), q.eq(0), c.eq(0), rp_over.eq(0),
                                 x_tile.eq(self.x_base), y_tile.eq(self.y_base)]
                    m.next = "SETUP"

            with m.State("SETUP"):
                m.d.comb += self.busy.eq(1)
                read_row_ptr(1)
                with m.If(self.nnz != 0):
                    m.next = "FILL"
                with m.Else():
                    m.next = "DRAIN"

            with m.State("FILL"):
                m.d.comb += [self.busy.eq(1), self.stall.eq(1)]
                load_weight_row(c == 0)
                with m.If(c == 0):
                    read_col_idx(0)
                with m.If(c == bk - 1):
                    m.d.sync += c.eq(0)
                    with m.If(blocks_left(0)):
                        m.next = "STEP"
                    with m.Else():
                        m.next = "DRAIN"
                with m.Else():
                    m.d.sync += c.eq(c + 1)

            with m.State("STEP"):
                m.d.comb += self.busy.eq(1)
                with m.If(c == 0):
                    m.d.comb += self.swap.eq(1)
                with m.If(c < bm):
                    x_addr = Mux(c == 0, x_tile + next_col, x_run)
                    m.d.comb += [self.x_addr.eq(x_addr), self.x_re.eq(1)]
                    m.d.sync += x_run.eq(x_addr + nb)
                with m.Else():
                    m.d.comb += self.stall.eq(1)
                with m.If(has_next):
                    with m.If(c < bk):
                        load_weight_row((c == 0) & wraps)
                    with m.If(c == 0):
                        read_col_idx(nxt)
                with m.If(c == d - 1):
                    m.d.sync += [c.eq(0), q.eq(q1)]
                    with m.If(blocks_left(q1)):
                        m.next = "STEP"
                    with m.Else():
                        m.next = "DRAIN"
                with m.Else():
                    m.d.sync += c.eq(c + 1)

            with m.State("DRAIN"):
                m.d.comb += self.busy.eq(1)
                with m.If(c == 0):
                    # End pointer of the next block row of the sequence.
                    with m.If(i + 1 < kb):
                        read_row_ptr(i + 2)
                    with m.Elif(~last_tile):
                        read_row_ptr(1)
                with m.Else():
                    y_addr = Mux(c == 1, y_tile + i, y_run)
                    m.d.comb += [self.y_addr.eq(y_addr), self.y_we.eq(1)]
                    m.d.sync += y_run.eq(y_addr + kb)
                with m.If(c == bm):
                    m.d.sync += c.eq(0)
                    with m.If(i + 1 < kb):
                        m.d.sync += i.eq(i + 1)
                        with m.If(blocks_left(q)):
                            m.next = "STEP"
                        with m.Else():
                            m.next = "DRAIN"
                    with m.Elif((q != self.nnz) | rp_over):
                        m.d.comb += self.error.eq(1)
                        m.next = "IDLE"
                    with m.Elif(~last_tile):
                        m.d.sync += [t.eq(t + 1), i.eq(0), q.eq(0),
                                     x_tile.eq(x_tile + (nb << lg_bm)),
                                     y_tile.eq(y_tile + (kb << lg_bm))]
                        with m.If(blocks_left(0)):
                            m.next = "STEP"
                        with m.Else():
                            m.next = "DRAIN"
                    with m.Else():
                        m.d.comb += self.done.eq(1)
                        m.next = "IDLE"
                with m.Else():
                    m.d.sync += c.eq(c + 1)
        return m
