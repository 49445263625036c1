"""The GEMM sequencer: runs the phases of ``lsp.gemm`` (``docs/hw.md`` §5).

After one setup cycle it starts phase 0 (fetch descriptor 0 and load tile 0's data); each later
phase starts when both the compute side and the DMA of the previous one are done: the new tile's
bank swaps take effect, its compute starts, and the DMA gets its job (store the Y region that
just finished, fetch and load the next tile). Phase T+1 stores the last region.
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ._params import check_int, check_pow2

__all__ = ["Sequencer"]

_FIELDS = ("tt", "kg", "ng", "r", "nnz")


class Sequencer(wiring.Component):
    """Phase control, bank selects and Y-region bookkeeping of the engine.

    Parameters
    ----------
    tile_m : int
        BM.
    desc_beats : int
        DRAM beats of one descriptor.

    Attributes
    ----------
    start : Signal(1), in
        The execute cycle of ``lsp.gemm``.
    desc_base, n_tiles : Signal(32), in
        From ``lsp.tiles``.
    busy : Signal(1), out
        A cycle of the GEMM (setup and phases).
    done, error : Signal(1), out
        The GEMM's last cycle: finished, or stopped on the error ``err_code``.
    err_code : Signal(3), out
    cx, cw, cy : Signal(1), out
        Compute banks of XMEM, WMEM/IDX and YMEM; the DMA uses the other ones.
    tile_start : Signal(1), out
        A tile's phase begins next cycle.
    comp_start, comp_* : out
        Start of the compute side and the geometry of the computing tile.
    dma_* : out / in
        The DMA's job and its status and decoded tile.
    """

    def __init__(self, *, tile_m: int, desc_beats: int) -> None:
        self._bm = check_pow2("tile_m", tile_m, minimum=4)
        self._kd = check_int("desc_beats", desc_beats, maximum=16)
        ports = {"start": In(1), "desc_base": In(32), "n_tiles": In(32),
                 "busy": Out(1), "done": Out(1), "error": Out(1), "err_code": Out(3),
                 "cx": Out(1), "cw": Out(1), "cy": Out(1), "tile_start": Out(1),
                 "comp_start": Out(1), "comp_busy": In(1), "comp_last": In(1),
                 "dma_gemm_start": Out(1), "dma_start": Out(1), "dma_do_store": Out(1),
                 "dma_do_fetch": Out(1), "dma_store_addr": Out(32), "dma_store_words": Out(32),
                 "dma_fetch_addr": Out(32), "dma_wfill_reset": Out(1),
                 "dma_busy": In(1), "dma_last": In(1), "dma_error": In(1),
                 "dma_err_code": In(3), "dma_swap_x": In(1), "dma_swap_w": In(1),
                 "dma_swap_y": In(1), "dma_y": In(32)}
        for name in _FIELDS:
            ports[f"comp_{name}"] = Out(32)
            ports[f"dma_{name}"] = In(32)
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        lg_bm = self._bm.bit_length() - 1
        k = Signal(32)                      # phase number
        fetch_at = Signal(32)               # DRAM beat of the next descriptor
        region_addr, region_words, region_ok = Signal(32), Signal(32), Signal()
        cur = {name: getattr(self, f"comp_{name}") for name in _FIELDS}
        m.d.comb += [self.dma_gemm_start.eq(self.start)]
        phase_end = ~((self.comp_busy & ~self.comp_last) | (self.dma_busy & ~self.dma_last))

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [self.cx.eq(0), self.cw.eq(0), self.cy.eq(0), region_ok.eq(0),
                                 k.eq(0), fetch_at.eq(self.desc_base)]
                    m.next = "SETUP"
            with m.State("SETUP"):
                m.d.comb += self.busy.eq(1)
                with m.If(self.n_tiles == 0):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += [self.dma_start.eq(1), self.dma_do_fetch.eq(1),
                                 self.dma_fetch_addr.eq(fetch_at)]
                    m.d.sync += fetch_at.eq(fetch_at + self._kd)
                    m.next = "PHASE"
            with m.State("PHASE"):
                m.d.comb += self.busy.eq(1)
                with m.If(phase_end):
                    with m.If(self.dma_error):
                        m.d.comb += [self.error.eq(1), self.err_code.eq(self.dma_err_code)]
                        m.next = "IDLE"
                    with m.Elif(k == self.n_tiles + 1):
                        m.d.comb += self.done.eq(1)
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += k.eq(k + 1)
                        m.d.comb += self.dma_start.eq(1)
                        with m.If(k + 1 <= self.n_tiles):
                            self._next_tile(m, k, fetch_at, region_addr, region_words,
                                            region_ok, cur, lg_bm)
                        with m.Else():
                            # phase T+1: the last region moves to the store side
                            m.d.sync += self.cy.eq(~self.cy)
                            m.d.comb += [self.dma_do_store.eq(region_ok),
                                         self.dma_store_addr.eq(region_addr),
                                         self.dma_store_words.eq(region_words)]
        return m

    def _next_tile(self, m, k, fetch_at, region_addr, region_words, region_ok, cur, lg_bm):
        """Start the phase of the tile the DMA decoded: swaps, compute, the DMA's job."""
        m.d.sync += [cur[name].eq(getattr(self, f"dma_{name}")) for name in _FIELDS]
        m.d.comb += [self.tile_start.eq(1), self.comp_start.eq(self.dma_nnz != 0),
                     self.dma_wfill_reset.eq(self.dma_swap_w),
                     self.dma_do_fetch.eq(k + 2 <= self.n_tiles),
                     self.dma_fetch_addr.eq(fetch_at)]
        m.d.sync += fetch_at.eq(fetch_at + self._kd)
        with m.If(self.dma_swap_x):
            m.d.sync += self.cx.eq(~self.cx)
        with m.If(self.dma_swap_w):
            m.d.sync += self.cw.eq(~self.cw)
        with m.If(self.dma_swap_y):
            m.d.sync += [self.cy.eq(~self.cy), region_ok.eq(1),
                         region_addr.eq(self.dma_y),
                         region_words.eq((self.dma_tt * self.dma_kg) << lg_bm)]
            m.d.comb += [self.dma_do_store.eq(region_ok), self.dma_store_addr.eq(region_addr),
                         self.dma_store_words.eq(region_words)]
