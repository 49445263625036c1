"""Mutation score of the core, per module, from a finished ``mutmut run`` (docs/reliability.md).

``mutmut run`` (configured in ``pyproject.toml``, ``[tool.mutmut]``) mutates the core modules
one change at a time and runs the tests that execute the changed function; a mutant the tests
fail on is *killed*. This script reads the outcome through ``mutmut results --all true``, takes
the mutants judged equivalent (no input can tell them from the original) from
``bench/mutation_equivalents.json`` ({mutant name: reason}), and prints and writes per module:
mutants, killed, equivalent, survived, and the score ``killed / (mutants - equivalent)``::

    .venv/bin/mutmut run --max-children 2      # every mutant: several hours on 2 cores
    .venv/bin/python bench/mutation_score.py   # bench/results/mutation.json and .md

A surviving mutant runs every test that executes its function, so a full run is long. A
stratified random sample (the same fraction of each module's mutants, drawn with a fixed seed)
estimates the score in a fraction of the time::

    .venv/bin/mutmut run $(.venv/bin/python bench/mutation_score.py --sample 0.1 --print-sample)
    .venv/bin/python bench/mutation_score.py --sample 0.1

Mutant names number the mutants of a function in order, so the equivalents file holds for the
source it was written against (its ``source_commit``); after a change to a module, re-check
the equivalents of that module.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import random
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lsp_codesign.table import format_markdown, format_table  # noqa: E402

HEADER = ["module", "mutants", "killed", "equivalent", "survived", "score"]
LINE = re.compile(r"^\s*(?P<name>\S+): (?P<status>.+?)\s*$")
KILLED = {"killed", "timeout", "caught by type check"}


def module_of(name: str) -> str:
    """``lsp_codesign.alloc.numerics.x_f__mutmut_3`` -> ``lsp_codesign/alloc/numerics.py``."""
    return name.rsplit(".", 1)[0].replace(".", "/") + ".py"


def read_results(cwd: Path) -> dict[str, str]:
    """{mutant name: status} from ``mutmut results --all true`` run in ``cwd``."""
    mutmut = Path(sys.executable).with_name("mutmut")
    out = subprocess.run([str(mutmut), "results", "--all", "true"], cwd=cwd, check=True,
                         capture_output=True, text=True).stdout
    res = {}
    for line in out.splitlines():
        m = LINE.match(line)
        if m and "__mutmut_" in m["name"]:
            res[m["name"]] = m["status"]
    if not res:
        raise SystemExit(f"no mutmut results in {cwd} (run `mutmut run` there first)")
    return res


def stratified_sample(names: list[str], fraction: float, seed: int) -> list[str]:
    """``ceil(fraction * n)`` mutants of each module, drawn with ``random.Random(seed)``."""
    by_module: dict[str, list[str]] = collections.defaultdict(list)
    for name in sorted(names):
        by_module[module_of(name)].append(name)
    rng = random.Random(seed)
    picked = []
    for mod in sorted(by_module):
        group = by_module[mod]
        picked += rng.sample(group, math.ceil(fraction * len(group)))
    return sorted(picked)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a proportion k/n (the sample's uncertainty)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, mid - half), min(1.0, mid + half)


def score_rows(results: dict[str, str], equivalent: dict[str, str]) -> tuple[list[dict], dict]:
    per: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    unknown = sorted(set(equivalent) - set(results))
    if unknown:
        raise SystemExit(f"{len(unknown)} equivalents are not mutants of this run, e.g. "
                         f"{unknown[0]} (stale bench/mutation_equivalents.json?)")
    for name, status in results.items():
        c = per[module_of(name)]
        c["mutants"] += 1
        if status in KILLED:
            c["killed"] += 1
        elif name in equivalent:
            c["equivalent"] += 1
        elif status == "not checked":
            c["not_checked"] += 1
        else:
            c["survived"] += 1
    rows = []
    total = collections.Counter()
    for mod in sorted(per):
        c = per[mod]
        total.update(c)
        rows.append({"module": mod, **{k: c[k] for k in ("mutants", "killed", "equivalent",
                                                         "survived", "not_checked")}})
    tot = {"module": "total", **{k: total[k] for k in ("mutants", "killed", "equivalent",
                                                       "survived", "not_checked")}}
    for r in [*rows, tot]:
        live = r["mutants"] - r["equivalent"]
        r["score"] = r["killed"] / live if live else 1.0
    return rows, tot


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, default=ROOT, help="where `mutmut run` ran")
    p.add_argument("--equivalents", type=Path,
                   default=ROOT / "bench" / "mutation_equivalents.json")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "mutation.json")
    p.add_argument("--sample", type=float, default=None, metavar="FRACTION",
                   help="score a stratified random sample of the mutants (e.g. 0.1)")
    p.add_argument("--seed", type=int, default=0, help="the sample's seed")
    p.add_argument("--print-sample", action="store_true",
                   help="print the sample's mutant names (for `mutmut run NAMES`) and stop")
    args = p.parse_args(argv)
    results = read_results(args.dir)
    if args.sample is not None:
        if not 0 < args.sample <= 1:
            raise SystemExit(f"--sample: a fraction in (0, 1], got {args.sample}")
        keep = set(stratified_sample(list(results), args.sample, args.seed))
        results = {k: v for k, v in results.items() if k in keep}
        if args.print_sample:
            print("\n".join(sorted(keep)))
            return 0
    eq_doc = json.loads(args.equivalents.read_text()) if args.equivalents.exists() else {}
    equivalent = {k: v for k, v in eq_doc.get("mutants", {}).items() if k in results}
    rows, tot = score_rows(results, equivalent)
    body = [[r["module"], f"{r['mutants']:,}", f"{r['killed']:,}", f"{r['equivalent']:,}",
             f"{r['survived']:,}", f"{100 * r['score']:.1f}%"] for r in [*rows, tot]]
    print(format_table(HEADER, body, left=1))
    live = tot["mutants"] - tot["equivalent"]
    lo, hi = wilson(tot["killed"], live)
    tot["score_95ci"] = [lo, hi]
    if args.sample is not None:
        print(f"a stratified sample of {tot['mutants']} mutants ({args.sample:g} of each module, "
              f"seed {args.seed}): score {100 * tot['score']:.1f}%, 95% interval "
              f"{100 * lo:.1f}-{100 * hi:.1f}%")
    if tot["not_checked"]:
        print(f"{tot['not_checked']} mutants not checked yet (the run is not finished)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "total": tot, "sample": args.sample,
                                    "seed": args.seed,
                                    "equivalents": str(args.equivalents.name)}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(format_markdown(HEADER, body) + "\n")
    print(f"wrote {args.out} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
