"""Read a VCD waveform and draw chosen signals to a PNG, headlessly (matplotlib).

``make sim ... WAVES=1`` and ``lsp-codesign verify RUN --waves LAYER`` leave a waveform in
``build/<config-hash>/waves/``; gtkwave or surfer open it interactively. This module is for
pictures without a display (the README's screenshot)::

    python -m sim.waves build/<hash>/waves/verify-blocks.0.mlp.fc1-verilator.vcd \\
        --out waves.png --cycles 90 \\
        --signal lsp_tb.start --signal lsp_tb.done \\
        --signal "dut.seq.fsm_state=IDLE,SETUP,PHASE" --signal dut.seq.k --signal dut.comp.mac

A signal is named by the end of its hierarchical name (``comp.mac``); ``NAME=A,B,C`` shows the
values 0, 1, 2 as A, B, C (an FSM's states in the order the design declares them). The window
starts at the first rising edge of the first signal (``--after``) and spans ``--cycles`` clock
periods of ``--clock``. Only VCD is read (Verilator writes VCD; Icarus's FST converts with
gtkwave's ``fst2vcd``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lsp_codesign.errors import LspError

__all__ = ["Trace", "read_vcd", "render_png", "main"]


@dataclass
class Trace:
    """One signal: its full name, width, and ``(time, value)`` changes (value None = x/z)."""

    name: str
    width: int
    changes: list[tuple[int, int | None]] = field(default_factory=list)

    def value_at(self, t: int) -> int | None:
        last = None
        for when, v in self.changes:
            if when > t:
                break
            last = v
        return last


def _definitions(fh, wanted: list[str]) -> tuple[dict[str, Trace], dict[str, list[Trace]]]:
    """Parse the header: for each wanted name suffix the shortest matching signal, and the
    traces by identifier code."""
    scope: list[str] = []
    best: dict[str, tuple[str, str, int]] = {}  # want -> (full name, code, width)
    tokens: list[str] = []
    for line in fh:
        tokens += line.split()
        if "$end" not in tokens:
            continue
        kind, body = tokens[0], tokens[1:-1]
        tokens = []
        if kind == "$scope":
            scope.append(body[1])
        elif kind == "$upscope":
            scope.pop()
        elif kind == "$var":
            full = ".".join(s for s in scope if not s.startswith("$")) + "." + body[3]
            for want in wanted:
                if (full == want or full.endswith("." + want)) and \
                        (want not in best or len(full) < len(best[want][0])):
                    best[want] = (full, body[2], int(body[1]))
        elif kind == "$enddefinitions":
            break
    found, codes, made = {}, {}, {}
    for want, (full, code, width) in best.items():
        if full not in made:
            made[full] = Trace(full, width)
            codes.setdefault(code, []).append(made[full])
        found[want] = made[full]
    return found, codes


def read_vcd(path: str | Path, signals: list[str]) -> dict[str, Trace]:
    """The value changes of ``signals`` (hierarchical name suffixes) in a VCD file."""
    p = Path(path)
    try:
        fh = open(p, errors="replace")
    except OSError as exc:
        raise LspError(f"{p}: cannot read ({exc.strerror})") from None
    with fh:
        found, codes = _definitions(fh, signals)
        missing = [s for s in signals if s not in found]
        if missing:
            raise LspError(f"{p}: no signal named {', '.join(missing)}")
        _values(fh, codes)
    return found


def _values(fh, codes: dict[str, list[Trace]]) -> None:
    t = 0
    for line in fh:
        if not line or line[0] in "$ \n":
            continue
        c = line[0]
        if c == "#":
            t = int(line[1:])
            continue
        if c in "bB":
            bits, code = line[1:].split()
            value = None if any(ch in "xXzZ" for ch in bits) else int(bits, 2)
        elif c in "01xXzZ":
            code = line[1:].strip()
            value = int(c) if c in "01" else None
        else:
            continue
        for tr in codes.get(code, ()):
            if not tr.changes or tr.changes[-1][1] != value:
                tr.changes.append((t, value))


def render_png(traces: list[tuple[str, Trace, list[str] | None]], out: str | Path, *,
               start: int, stop: int, period: int, title: str = "", first_cycle: int = 0,
               xlabel: str = "clock cycles") -> Path:
    """Draw ``(label, trace, value names)`` rows between ``start`` and ``stop`` (VCD units),
    with the x axis in clock cycles of ``period``, ``start`` being cycle ``first_cycle``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 0.55 * len(traces) + 1.2))
    for row, (label, tr, names) in enumerate(traces):
        y = len(traces) - 1 - row
        pts = [(start, tr.value_at(start))] + [(t, v) for t, v in tr.changes if start < t < stop]
        pts.append((stop, pts[-1][1]))
        for (t0, v), (t1, _n) in zip(pts, pts[1:]):
            x0 = first_cycle + (t0 - start) / period
            x1 = first_cycle + (t1 - start) / period
            if tr.width == 1:
                level = y + (0.7 if v else 0.1)
                ax.plot([x0, x1], [level, level], color="tab:green" if v is not None else "red",
                        lw=1.2)
                ax.plot([x1, x1], [y + 0.1, y + 0.7], color="tab:green", lw=0.4)
                continue
            ax.fill_between([x0, x1], y + 0.1, y + 0.7, color="tab:blue" if v is not None
                            else "red", alpha=0.15, lw=0)
            ax.plot([x1, x1], [y + 0.1, y + 0.7], color="tab:blue", lw=0.6)
            text = "x" if v is None else (names[v] if names and v < len(names) else str(v))
            if x1 - x0 >= 0.45 * max(1, len(text)) * (stop - start) / period / 160:
                ax.text((x0 + x1) / 2, y + 0.4, text, ha="center", va="center", fontsize=7)
    ax.set_yticks([len(traces) - 1 - r + 0.4 for r in range(len(traces))],
                  [label for label, _t, _n in traces], fontsize=8)
    ax.set_xlim(first_cycle, first_cycle + (stop - start) / period)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", color="0.9", lw=0.5)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sim.waves", description=__doc__.splitlines()[0])
    ap.add_argument("vcd")
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--signal", action="append", required=True, metavar="NAME[=A,B,..]")
    ap.add_argument("--clock", default="lsp_tb.clk", help="clock signal (sets the period)")
    ap.add_argument("--after", default=None, help="start at this signal's first rising edge "
                    "(default: the first --signal)")
    ap.add_argument("--cycles", type=int, default=100, help="clock cycles shown")
    ap.add_argument("--skip", type=int, default=0, help="cycles to skip after the start")
    ap.add_argument("--title", default="")
    args = ap.parse_args(argv)
    specs = [(s.split("=", 1)[0], s.split("=", 1)[1].split(",") if "=" in s else None)
             for s in args.signal]
    after = args.after or specs[0][0]
    try:
        found = read_vcd(args.vcd, [args.clock, after] + [n for n, _v in specs])
        clk = [t for t, v in found[args.clock].changes if v == 1]
        rises = [t for t, v in found[after].changes if v == 1]
        if len(clk) < 2 or not rises:
            raise LspError(f"{args.vcd}: {args.clock} does not toggle or {after} never rises")
        period = clk[1] - clk[0]
        start = rises[0] + args.skip * period
        out = render_png([(n, found[n], v) for n, v in specs], args.out, start=start,
                         stop=start + args.cycles * period, period=period, title=args.title,
                         first_cycle=args.skip,
                         xlabel=f"clock cycles after the first rising edge of {after}")
    except LspError as exc:
        print(f"sim.waves: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
