"""Mutation score of the core, per module, from a finished ``mutmut run`` (docs/reliability.md).

``mutmut run`` (configured in ``pyproject.toml``, ``[tool.mutmut]``) mutates the core modules
one change at a time and runs the tests that execute the changed function; a mutant the tests
fail on is *killed*. This script reads the outcome through ``mutmut results --all true``, takes
the mutants judged equivalent (no input can tell them from the original) from
``bench/mutation_equivalents.json`` ({mutant name: reason}), and prints and writes per module:
mutants, killed, equivalent, survived, and the score ``killed / (mutants - equivalent)``::

    .venv/bin/mutmut run --max-children 2      # about an hour and a half on 2 cores
    .venv/bin/python bench/mutation_score.py   # bench/results/mutation.json and .md

Mutant names number the mutants of a function in order, so the equivalents file holds for the
source it was written against (its ``source_commit``); after a change to a module, re-check
the equivalents of that module.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lsp_codesign.table import format_markdown, format_table  # noqa: E402

HEADER = ["module", "mutants", "killed", "equivalent", "survived", "score"]
LINE = re.compile(r"^\s*(?P<name>\S+): (?P<status>.+?)\s*$")
KILLED = {"killed", "timeout", "caught by type check", "segfault"}


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
    args = p.parse_args(argv)
    eq_doc = json.loads(args.equivalents.read_text()) if args.equivalents.exists() else {}
    equivalent = eq_doc.get("mutants", {})
    rows, tot = score_rows(read_results(args.dir), equivalent)
    body = [[r["module"], f"{r['mutants']:,}", f"{r['killed']:,}", f"{r['equivalent']:,}",
             f"{r['survived']:,}", f"{100 * r['score']:.1f}%"] for r in [*rows, tot]]
    print(format_table(HEADER, body, left=1))
    if tot["not_checked"]:
        print(f"{tot['not_checked']} mutants not checked yet (the run is not finished)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "total": tot,
                                    "equivalents": str(args.equivalents.name)}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(format_markdown(HEADER, body) + "\n")
    print(f"wrote {args.out} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
