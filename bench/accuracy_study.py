"""Accuracy study: the allocator's methods at equal FLOPs on the embedded model.

For every block size and seed, one calibration pass with the allocator's default curves (the
seed chooses the calibration images) feeds :func:`lsp_codesign.allocator.allocate_from_calibration`
for every method (``lsp``, ``beta0``, ``uniform``, ``global``) and FLOPs target; a second pass
with the paper's curves (empirical Fisher, first-order term, Taylor score) feeds ``lsp-paper``. Each allocation's masks are applied to the
dense ``vit-mnist`` model and measured on the full MNIST test set:

- top-1 right after pruning, and the output distortion: the mean KL divergence of the pruned
  model's softmax from the dense model's, in nats;
- top-1 and KL after a fixed short masked finetune (the same recipe for every method: the
  defaults of ``lsp-codesign finetune``: one epoch over the 60 000 training digits, AdamW at the
  model's learning rate, distillation from the dense model), with the masks verified after.

Results over the seeds are reported as mean +- sample std. Outputs:
``bench/results/accuracy_study.json`` (settings, every run, the summary and the goal checks),
``bench/results/accuracy_study.png`` and a markdown table on stdout. Partial results are kept
in ``accuracy_study.json.tmp`` so an interrupted study resumes where it stopped.

Run from the repository root (about two hours on one core with 5 seeds)::

    nice -n 5 .venv/bin/python bench/accuracy_study.py

``--quick`` runs a small smoke version (one seed, subsets) in about a minute.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = ("lsp", "beta0", "uniform", "global", "lsp-paper")
BASELINES = ("beta0", "uniform", "global", "lsp-paper")
LABELS = {"lsp": "LSP", "beta0": "LSP, beta=0", "uniform": "uniform", "global": "global",
          "lsp-paper": "LSP, empirical Fisher (paper)"}
# "lsp-paper" is the allocator's lsp method on the paper-faithful curves: the empirical Fisher
# (the data set's labels), the first-order term and the first-order Taylor block score
PAPER = {"curvature": "empirical", "first_order": "on", "score": "taylor"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hw", default=str(ROOT / "configs" / "vita.yaml"))
    p.add_argument("--targets", type=float, nargs="+", default=[0.7, 0.5, 0.3])
    p.add_argument("--blocks", nargs="+", default=["8x8", "16x16"])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--calib", type=int, default=1024, help="calibration images per seed")
    p.add_argument("--epochs", type=int, default=1, help="finetune epochs")
    p.add_argument("--lr", type=float, default=None, help="finetune lr (default: the model's)")
    p.add_argument("--train-images", type=int, default=None, help="finetune subset size")
    p.add_argument("--test-images", type=int, default=None, help="test subset size")
    p.add_argument("--no-finetune", action="store_true", help="measure right after pruning only")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1 is fastest on a busy 2-core machine)")
    p.add_argument("--out", type=Path, default=None,
                   help="output stem (default bench/results/accuracy_study; with --quick "
                        "build/accuracy_study_quick)")
    p.add_argument("--fresh", action="store_true", help="ignore partial results")
    p.add_argument("--from-json", type=Path, metavar="FILE",
                   help="no runs: rebuild the summary, table and plot from a study JSON")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: one seed, 256 calibration, 2048 training, 2000 test images")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds = args.seeds[:1]
        args.calib = min(args.calib, 256)
        args.train_images = args.train_images or 2048
        args.test_images = args.test_images or 2000
    if args.out is None:
        args.out = (ROOT / "build" / "accuracy_study_quick" if args.quick
                    else ROOT / "bench" / "results" / "accuracy_study")
    return args


def _key(block: str, seed: int, target: float, method: str) -> str:
    return f"{block}|{seed}|{target:g}|{method}"


def _mean_std(values: list[float]) -> tuple[float, float, float]:
    """Mean, sample std and the worst (lowest) value."""
    if not values:
        return float("nan"), float("nan"), float("nan")
    return (statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0),
            min(values))


def run_study(args: argparse.Namespace) -> dict:
    import torch

    from lsp_codesign.allocator import CurvatureOptions, allocate_from_calibration, calibrate
    from lsp_codesign.config import load_config
    from lsp_codesign.masking import apply_masks, element_masks
    from lsp_codesign.training import evaluate_models, train
    from models import DEFAULT_MODEL, create_model, embedded_metadata, model_info
    from models.data import calibration_loader, test_loader, train_loader

    torch.set_num_threads(args.threads)
    name = DEFAULT_MODEL
    lr = args.lr if args.lr is not None else model_info(name).finetune_lr
    dense = create_model(name)
    test = test_loader(name, args.test_images)
    dense_eval = evaluate_models({"dense": dense}, test, progress=False)["dense"]
    print(f"dense {name}: top-1 {100 * dense_eval['top1']:.2f}% on {dense_eval['total']} "
          "test images", flush=True)

    settings = {
        "model": name, "hw": os.path.relpath(args.hw, ROOT), "targets": args.targets,
        "blocks": args.blocks, "methods": args.methods, "seeds": args.seeds,
        "calib_images": args.calib, "finetune": None if args.no_finetune else {
            "epochs": args.epochs, "lr": lr, "batch_size": 128, "distill": True,
            "distill_alpha": 0.5, "temperature": 2.0, "optimizer": "AdamW, wd 0.05, "
            "5% warmup, cosine", "augment": "random shift <= 2 px",
            "train_images": args.train_images or 60000},
        "test_images": dense_eval["total"], "threads": args.threads,
        "curves": CurvatureOptions.resolve().record(),
        "paper_curves": CurvatureOptions.resolve(**PAPER).record(),
        "dense_checkpoint_sha256": embedded_metadata()["sha256"],
        "torch": torch.__version__,
    }
    tmp = args.out.with_name(args.out.name + ".json.tmp")
    runs: dict[str, dict] = {}
    if tmp.exists() and not args.fresh:
        saved = json.loads(tmp.read_text())
        if saved.get("settings") == settings:
            runs = saved["runs"]
            print(f"resuming: {len(runs)} runs already in {tmp}", flush=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)

    t_start = time.perf_counter()
    for block in args.blocks:
        cfg = load_config(args.hw, block=block)
        for seed in args.seeds:
            todo = [(t, m) for t in args.targets for m in args.methods
                    if _key(block, seed, t, m) not in runs]
            if not todo:
                continue
            loader = calibration_loader(name, args.calib, seed, batch_size=64)
            calibs, calib_s = {}, {}
            for kind in sorted({"paper" if m == "lsp-paper" else "default" for _, m in todo}):
                opts = CurvatureOptions.resolve(**(PAPER if kind == "paper" else {}))
                t0 = time.perf_counter()
                calibs[kind] = calibrate(dense, loader, block_k=cfg.block_k,
                                         block_n=cfg.block_n, options=opts, seed=seed,
                                         progress=False, total=args.calib, model_name=name)
                calib_s[kind] = time.perf_counter() - t0
            for target, method in todo:
                kind = "paper" if method == "lsp-paper" else "default"
                alloc = allocate_from_calibration(
                    calibs[kind], cfg, flops_target=target,
                    method="lsp" if method == "lsp-paper" else method)
                tot = alloc.totals()
                model = copy.deepcopy(dense)
                em = element_masks(model, alloc.masks)
                apply_masks(model, em)
                res = {"block": block, "seed": seed, "target": target, "method": method,
                       "flops_ratio": tot["flops_ratio"], "params_ratio": tot["params_ratio"],
                       "energy_ratio": tot["energy_ratio"], "speedup": tot["speedup"],
                       "kept_blocks": tot["kept_blocks"], "total_blocks": tot["total_blocks"],
                       "beta": alloc.beta, "calib_seconds": round(calib_s[kind], 2),
                       "curves": alloc.options.record(),
                       "kept_fraction_by_kind": alloc.kept_fraction_by_kind()}
                ev = evaluate_models({"dense": dense, "pruned": model}, test,
                                     reference="dense", progress=False)["pruned"]
                res["pruned_top1"] = ev["top1"]
                res["pruned_kl"] = ev["kl_to_reference"]
                if not args.no_finetune:
                    torch.manual_seed(seed)
                    t1 = time.perf_counter()
                    tl = train_loader(name, args.train_images, seed, 128)
                    train(model, tl, epochs=args.epochs, lr=lr, masks=em, teacher=dense,
                          distill_alpha=0.5, temperature=2.0, progress=sys.stderr.isatty(),
                          desc=f"{block} s{seed} R{target:g} {method}")
                    res["finetune_seconds"] = round(time.perf_counter() - t1, 1)
                    ev = evaluate_models({"dense": dense, "tuned": model}, test,
                                         reference="dense", progress=False)["tuned"]
                    res["finetuned_top1"] = ev["top1"]
                    res["finetuned_kl"] = ev["kl_to_reference"]
                runs[_key(block, seed, target, method)] = res
                done = len(runs)
                print(f"[{done}] {block} seed {seed} R={target:g} {method:8s} FLOPs "
                      f"{tot['flops_ratio']:.4f}  pruned {100 * res['pruned_top1']:6.2f}% "
                      f"KL {res['pruned_kl']:.4f}" + (
                          "" if args.no_finetune else
                          f"  finetuned {100 * res['finetuned_top1']:6.2f}% "
                          f"KL {res['finetuned_kl']:.4f}"), flush=True)
                tmp.write_text(json.dumps({"settings": settings, "runs": runs}, indent=1))
    elapsed = time.perf_counter() - t_start
    return {"settings": settings, "dense": dense_eval, "runs": runs, "seconds": elapsed}


def summarise(study: dict) -> dict:
    s = study["settings"]
    stages = ["pruned"] + ([] if s["finetune"] is None else ["finetuned"])
    summary, checks = [], []
    for block in s["blocks"]:
        for target in s["targets"]:
            row = {"block": block, "target": target}
            for method in s["methods"]:
                rs = [study["runs"][_key(block, seed, target, method)] for seed in s["seeds"]]
                entry = {"flops_ratio": _mean_std([r["flops_ratio"] for r in rs])[0],
                         "params_ratio": _mean_std([r["params_ratio"] for r in rs])[0],
                         "energy_ratio": _mean_std([r["energy_ratio"] for r in rs])[0],
                         "n": len(rs)}
                for st in stages:
                    entry[f"{st}_top1"] = _mean_std([100 * r[f"{st}_top1"] for r in rs])
                    entry[f"{st}_kl"] = _mean_std([r[f"{st}_kl"] for r in rs])
                row[method] = entry
            summary.append(row)
            if "lsp" not in s["methods"]:
                continue
            for st in stages:
                others = {m: row[m][f"{st}_top1"][0] for m in BASELINES if m in row}
                if not others:
                    continue
                best = max(others, key=others.get)
                margin = row["lsp"][f"{st}_top1"][0] - others[best]
                noise = max(row["lsp"][f"{st}_top1"][1], row[best][f"{st}_top1"][1])
                checks.append({"block": block, "target": target, "stage": st,
                               "lsp_top1": row["lsp"][f"{st}_top1"][0],
                               "lsp_std": row["lsp"][f"{st}_top1"][1],
                               "best_baseline": best, "best_baseline_top1": others[best],
                               "best_baseline_std": row[best][f"{st}_top1"][1],
                               "lsp_worst_seed": row["lsp"][f"{st}_top1"][2],
                               "best_baseline_worst_seed": row[best][f"{st}_top1"][2],
                               "margin_points": margin, "lsp_at_or_above": margin >= 0,
                               "beyond_seed_std": abs(margin) > noise})
    dense = 100 * study["dense"]["top1"]
    goal_dense = []
    if s["finetune"] is not None and "lsp" in s["methods"] and 0.5 in s["targets"]:
        for block in s["blocks"]:
            row = next(r for r in summary if r["block"] == block and r["target"] == 0.5)
            gap = dense - row["lsp"]["finetuned_top1"][0]
            goal_dense.append({"block": block, "dense_top1": dense,
                               "lsp_finetuned_top1": row["lsp"]["finetuned_top1"][0],
                               "gap_points": gap, "within_1_point": gap <= 1.0})
    return {"summary": summary, "goal_lsp_vs_baselines": checks,
            "goal_within_1_point_at_0.5": goal_dense}


def markdown_table(study: dict, summ: dict) -> str:
    s = study["settings"]
    ft = s["finetune"] is not None
    dense = 100 * study["dense"]["top1"]
    n = len(s["seeds"])
    head = ["block", "FLOPs target", "method", "FLOPs kept", "top-1 pruned % (worst)",
            "KL pruned"]
    if ft:
        head += ["top-1 finetuned % (worst)", "KL finetuned"]
    lines = [f"Dense vit-mnist: **{dense:.2f}%** top-1 on {study['dense']['total']} MNIST test "
             f"images. Mean ± std over {n} seed{'s' if n > 1 else ''} (worst seed in "
             "brackets); best mean top-1 per setting in bold.", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]

    def fmt(ms, digits=2):
        return f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"

    def fmt_worst(ms):
        return f"{ms[0]:.2f} ± {ms[1]:.2f} ({ms[2]:.2f})"

    for row in summ["summary"]:
        best = {st: max(row[m][f"{st}_top1"][0] for m in s["methods"])
                for st in (["pruned", "finetuned"] if ft else ["pruned"])}
        for method in s["methods"]:
            e = row[method]
            cells = [row["block"], f"{row['target']:g}", LABELS[method],
                     f"{e['flops_ratio']:.3f}"]
            for st in (["pruned", "finetuned"] if ft else ["pruned"]):
                top = fmt_worst(e[f"{st}_top1"])
                cells += [f"**{top}**" if e[f"{st}_top1"][0] == best[st] else top,
                          fmt(e[f"{st}_kl"], 3)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goals_text(summ: dict) -> str:
    lines = []
    for c in summ["goal_lsp_vs_baselines"]:
        verdict = "at or above" if c["lsp_at_or_above"] else "BELOW"
        noise = ("more than" if c["beyond_seed_std"] else "within")
        lines.append(f"- {c['block']}, R={c['target']:g}, {c['stage']}: LSP "
                     f"{c['lsp_top1']:.2f}% is {verdict} the best baseline "
                     f"({LABELS[c['best_baseline']]}, {c['best_baseline_top1']:.2f}%) by "
                     f"{c['margin_points']:+.2f} points ({noise} one seed std)")
    for g in summ["goal_within_1_point_at_0.5"]:
        verdict = "within" if g["within_1_point"] else "NOT within"
        lines.append(f"- {g['block']}, R=0.5 finetuned: LSP {g['lsp_finetuned_top1']:.2f}% vs "
                     f"dense {g['dense_top1']:.2f}%: {g['gap_points']:.2f} points, {verdict} "
                     "1 point")
    return "\n".join(lines)


def plot(study: dict, summ: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = study["settings"]
    stages = ["pruned"] + ([] if s["finetune"] is None else ["finetuned"])
    cols = [(st, "top1") for st in stages] + [(st, "kl") for st in stages]
    fig, axes = plt.subplots(len(s["blocks"]), len(cols), squeeze=False,
                             figsize=(4.2 * len(cols), 3.4 * len(s["blocks"])))
    dense = 100 * study["dense"]["top1"]
    styles = {"lsp": ("C3", "o"), "beta0": ("C1", "s"), "uniform": ("C0", "^"),
              "global": ("C2", "D"), "lsp-paper": ("C4", "v")}
    for i, block in enumerate(s["blocks"]):
        rows = [r for r in summ["summary"] if r["block"] == block]
        for j, (st, metric) in enumerate(cols):
            ax = axes[i][j]
            for method in s["methods"]:
                xs = [r[method]["flops_ratio"] for r in rows]
                ms = [r[method][f"{st}_{metric}"] for r in rows]
                color, marker = styles[method]
                ax.errorbar(xs, [m[0] for m in ms], yerr=[m[1] for m in ms], color=color,
                            marker=marker, capsize=3, label=LABELS[method], lw=1.5, ms=5)
            if metric == "top1":
                ax.axhline(dense, color="k", ls="--", lw=1, label=f"dense {dense:.2f}%")
                ax.set_ylim(top=max(ax.get_ylim()[1], dense + 0.2))
                ax.set_ylabel("top-1 (%)")
            else:
                ax.set_yscale("log")
                ax.set_ylabel("KL to dense (nats)")
            ax.set_title(f"{block}: {'after pruning' if st == 'pruned' else 'after finetune'}"
                         f" ({'top-1' if metric == 'top1' else 'KL'})", fontsize=10)
            ax.set_xlabel("FLOPs kept (fraction of dense)")
            ax.grid(alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=8)
    fig.suptitle(f"vit-mnist: allocator methods at equal FLOPs ({len(s['seeds'])} seeds, "
                 "mean ± std)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json is not None:
        saved = json.loads(args.from_json.read_text())
        study = {k: saved[k] for k in ("settings", "dense", "runs", "seconds")}
        command = saved["command"]
    else:
        study = run_study(args)
        command = "python bench/accuracy_study.py " + " ".join(
            sys.argv[1:] if argv is None else argv)
    summ = summarise(study)
    out_json = args.out.with_suffix(".json")
    out_png = args.out.with_suffix(".png")
    doc = {**study, **summ, "command": command}
    table = markdown_table(study, summ)
    goals = goals_text(summ)
    doc["table_markdown"] = table
    out_json.write_text(json.dumps(doc, indent=1) + "\n")
    plot(study, summ, out_png)
    tmp = args.out.with_name(args.out.name + ".json.tmp")
    if tmp.exists():
        tmp.unlink()
    print()
    print(table)
    print()
    print(goals)
    print(f"\nwrote {out_json} and {out_png} ({study['seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
