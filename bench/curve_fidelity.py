"""Curve fidelity: how well each distortion curve predicts the damage pruning really does.

On the embedded ``vit-mnist``, for each block size, every curve mode prunes one layer at a
time along its own block order, at 10 %, 20 %, ..., 100 % of the layer's blocks (plus 25 %
and 75 %), and the damage is measured on held-out MNIST test images: the increase of the
mean cross entropy, and the mean KL(dense || pruned). The modes:

* the allocator's curvatures ``fisher``, ``ggn`` and ``empirical``, each with the first-order
  term on and off, and each with both block scores (``delta``, ``taylor``), all from one
  calibration pass per curvature (1024 training digits, seed 0);
* two references: ``magnitude`` (delta = sum of ||W_b||^2 over the pruned blocks, smallest
  blocks first) and ``rank1`` (an LPViT-style curve: the gradient g of mean(f(x)^2) over the
  calibration images, delta = g^T dW + 1/2 (g^T dW)^2, Taylor order |W * g|).

For each mode it reports the pooled Spearman correlation of predicted delta against the
measured CE increase and against KL over every (layer, ratio) point, Kendall's tau across
layers at 25/50/75 % pruned, the median ratio delta / measured CE increase, how many curves end
below zero, and the mean damage at 50 % pruned (how good the mode's block order is). The
allocator compares whole allocations, so it also reports a joint metric: 40 random
allocations that keep the same MACs (half the linear layers' blocks) prune every layer at once
along the mode's order, and the Spearman correlation of the sum of the layers' delta against the
measured CE increase, KL and top-1 drop says whether the curves rank them right. Prints a table, writes ``bench/results/curve_fidelity.json`` and plots
predicted against measured, one panel per mode (``curve_fidelity.png``).

Run from the repository root (about 15 minutes on one core)::

    nice -n 5 .venv/bin/python bench/curve_fidelity.py

``--quick`` runs a smoke version (256 calibration and 500 test images, 8x8 is skipped).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GRID = (0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 1.0)
TAU_AT = (0.25, 0.5, 0.75)
CURVATURES = ("fisher", "ggn", "empirical")
REFERENCES = ("magnitude", "rank1")


# ---------------------------------------------------------------------------------------------
# Rank statistics (numpy; no scipy on the machine)


def _ranks(a: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions)."""
    a = np.asarray(a, dtype=float)
    order = np.argsort(a, kind="stable")
    ranks = np.empty(len(a))
    ranks[order] = np.arange(len(a), dtype=float)
    _, inv, counts = np.unique(a, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return sums[inv] / counts[inv]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    dx = np.sign(x[:, None] - x[None, :])
    dy = np.sign(y[:, None] - y[None, :])
    iu = np.triu_indices(len(x), 1)
    dx, dy = dx[iu], dy[iu]
    n0 = len(dx)
    n1 = n0 - int((dx == 0).sum())
    n2 = n0 - int((dy == 0).sum())
    if n1 == 0 or n2 == 0:
        return float("nan")
    return float((dx * dy).sum() / np.sqrt(n1 * n2))


# ---------------------------------------------------------------------------------------------
# Damage measurement


class Damage:
    """Mean CE increase and mean KL(dense || pruned) on fixed test images, one layer pruned.

    Results are cached by (layer, mask), so modes that share an order share measurements.
    """

    def __init__(self, model, images, labels) -> None:
        import torch
        import torch.nn.functional as F

        self.model, self.images, self.labels = model, images, labels
        self.modules = dict(model.named_modules())
        with torch.no_grad():
            self.ref_logp = F.log_softmax(self._logits(), dim=-1)
        self.ref_ce = float(F.nll_loss(self.ref_logp, labels))
        self.cache: dict[tuple[str, str], tuple[float, float]] = {}
        self.evaluations = 0

    def _logits(self):
        import torch

        return torch.cat([self.model(x) for x in self.images.split(500)])

    def __call__(self, name: str, block_mask: np.ndarray, grid) -> tuple[float, float]:
        key = (name, hashlib.sha1(np.packbits(block_mask).tobytes()).hexdigest())
        if key not in self.cache:
            ce, kl, _ = self.joint({name: (block_mask, grid)})
            self.cache[key] = (ce, kl)
        return self.cache[key]

    def joint(self, masks: dict) -> tuple[float, float, float]:
        """CE increase, KL and top-1 drop with every layer of ``masks`` pruned at once
        (``{name: (block_mask, grid)}``)."""
        import torch
        import torch.nn.functional as F

        saved = {}
        try:
            for name, (block_mask, grid) in masks.items():
                mod = self.modules[name]
                keep = np.repeat(np.repeat(block_mask, grid.block_k, 0), grid.block_n, 1)
                keep = torch.from_numpy(keep[:grid.k, :grid.n].copy())
                saved[name] = mod.weight.detach().clone()
                with torch.no_grad():
                    mod.weight.mul_(keep.to(mod.weight.dtype))
            with torch.no_grad():
                logp = F.log_softmax(self._logits(), dim=-1)
        finally:
            with torch.no_grad():
                for name, w in saved.items():
                    self.modules[name].weight.copy_(w)
        ce = float(F.nll_loss(logp, self.labels)) - self.ref_ce
        kl = float((self.ref_logp.exp() * (self.ref_logp - logp)).sum(-1).mean())
        top1 = float((self.ref_logp.argmax(-1) == self.labels).float().mean()
                     - (logp.argmax(-1) == self.labels).float().mean())
        self.evaluations += 1
        return ce, kl, top1


# ---------------------------------------------------------------------------------------------
# Curves of every mode


def mode_name(curvature: str, first_order: bool, score: str, samples: int = 1) -> str:
    per = f" x{samples}" if samples > 1 else ""
    return f"{curvature}{per}, first-order {'on' if first_order else 'off'}, score {score}"


def curvature_curves(calib, cfg, kappa: float,
                     first_orders=(False, True)) -> dict[str, dict[str, tuple]]:
    """``{mode: {layer: (order, delta, grid)}}`` for the first-order/score variants."""
    from lsp_codesign.allocator import CurvatureOptions, layer_curve

    out = {}
    base = calib.options
    for first_order in first_orders:
        for score in ("delta", "taylor"):
            opts = CurvatureOptions.resolve(base.curvature, samples=base.samples,
                                            first_order=first_order, score=score)
            curves = {}
            for name, st in calib.layers.items():
                c = layer_curve(st, cfg, kappa=kappa, smooth=0.0, options=opts)
                curves[name] = (c.order, c.delta, c.grid)
            out[mode_name(base.curvature.value, first_order, score, base.samples)] = curves
    return out


def reference_curves(model, loader, calib, cfg, kappa: float) -> dict[str, dict[str, tuple]]:
    """``magnitude`` and the LPViT-style ``rank1`` curves."""
    import torch

    from lsp_codesign.allocator import block_reduce, distortion_curve
    from lsp_codesign.packing import BlockGrid

    mods = dict(model.named_modules())
    weights = {n: mods[n].weight for n in calib.layers}
    grads = {n: torch.zeros_like(w, dtype=torch.float64) for n, w in weights.items()}
    n_img = 0
    for images, _ in loader:  # gradient of mean(f(x)^2) over the calibration images
        z = model(images)
        gs = torch.autograd.grad((z ** 2).mean(dim=1).sum(), list(weights.values()))
        for n, g in zip(weights, gs):
            grads[n] += g.double()
        n_img += images.shape[0]
    mag, rank1 = {}, {}
    for name, st in calib.layers.items():
        g_shape = st.shape
        grid = BlockGrid(g_shape.k, g_shape.n, cfg.block_k, cfg.block_n)
        w = st.weight.astype(np.float64)
        w_sq = block_reduce(w * w, grid).ravel()
        order = np.argsort(w_sq, kind="stable")
        mag[name] = (order, np.concatenate([[0.0], np.cumsum(w_sq[order])]), grid)
        gf = (grads[name] / n_img).numpy()
        s = block_reduce(gf * w, grid).ravel()
        taylor = block_reduce(np.abs(gf * w), grid).ravel()
        order = np.argsort(taylor, kind="stable")
        delta = distortion_curve(s[None, :], w_sq[order], kappa, order, grad_dot=s[order])
        rank1[name] = (order, delta, grid)
    return {"magnitude": mag, "rank1": rank1}


# ---------------------------------------------------------------------------------------------
# Scoring one mode


def points(curves: dict[str, tuple], damage: Damage) -> list[dict]:
    rows = []
    for name, (order, delta, grid) in curves.items():
        nb = grid.n_blocks
        for frac in GRID:
            k = int(round(frac * nb))
            if k == 0:
                continue
            mask = np.ones(nb, dtype=bool)
            mask[order[:k]] = False
            ce, kl = damage(name, mask.reshape(grid.shape), grid)
            rows.append({"layer": name, "frac": frac, "k": k, "blocks": nb,
                         "delta": float(delta[k]), "ce": ce, "kl": kl})
    return rows


def score_mode(rows: list[dict], curves: dict[str, tuple]) -> dict:
    pooled = [r for r in rows if r["frac"] not in (0.25, 0.75)]  # the 10-point grid
    d = np.array([r["delta"] for r in pooled])
    ce = np.array([r["ce"] for r in pooled])
    kl = np.array([r["kl"] for r in pooled])
    out = {"spearman_ce": spearman(d, ce), "spearman_kl": spearman(d, kl),
           "points": len(pooled)}
    for frac in TAU_AT:
        at = [r for r in rows if r["frac"] == frac]
        out[f"tau_{int(frac * 100)}"] = kendall_tau_b([r["delta"] for r in at],
                                                      [r["ce"] for r in at])
    pos = ce > 1e-4
    out["median_delta_over_ce"] = float(np.median(d[pos] / ce[pos])) if pos.any() else None
    half = [r for r in rows if r["frac"] == 0.5]
    # how good the order is (lower: less damage for the same blocks pruned)
    out["mean_ce_at_50"] = float(np.mean([r["ce"] for r in half]))
    out["mean_kl_at_50"] = float(np.mean([r["kl"] for r in half]))
    out["curves_below_zero"] = int(sum(float(c[1][-1]) < 0 for c in curves.values()))
    out["curves_ever_below_zero"] = int(sum(float(np.min(c[1])) < 0 for c in curves.values()))
    return out


def random_allocations(curves: dict[str, tuple], count: int, target: float,
                       seed: int) -> list[dict[str, float]]:
    """``count`` random kept fractions per layer with the same whole-layer MACs, ``target``
    of the linear layers' (the decision the allocator makes: where to prune at a fixed
    budget). Each layer draws ``u ** p`` (``u`` uniform, ``p`` in [0.3, 3], so some layers are
    pruned nearly whole and some barely); one common scale then meets the budget."""
    rng = np.random.default_rng(seed)
    macs = {name: int(grid.n_blocks) * 1.0 for name, (_, _, grid) in curves.items()}
    total = sum(macs.values())
    out = []
    for _ in range(count):
        u = {n: float(rng.uniform() ** rng.uniform(0.3, 3.0)) for n in curves}
        lo, hi = 0.0, 1e3
        for _ in range(80):
            mid = (lo + hi) / 2
            f = sum(min(1.0, mid * u[n]) * macs[n] for n in curves) / total
            lo, hi = (mid, hi) if f < target else (lo, mid)
        out.append({n: min(1.0, hi * u[n]) for n in curves})
    return out


def joint_scores(curves: dict[str, tuple], allocs: list[dict[str, float]],
                 damage: Damage) -> dict:
    """Does the sum of the layers' curves rank whole allocations at equal budget as the
    measured damage does? Each allocation prunes every layer at once along the mode's order."""
    pred, ce, kl, top1 = [], [], [], []
    for a in allocs:
        masks, total = {}, 0.0
        for name, (order, delta, grid) in curves.items():
            k = int(round((1.0 - a[name]) * grid.n_blocks))
            mask = np.ones(grid.n_blocks, dtype=bool)
            mask[order[:k]] = False
            masks[name] = (mask.reshape(grid.shape), grid)
            total += float(delta[k])
        c, k_, t = damage.joint(masks)
        pred.append(total)
        ce.append(c)
        kl.append(k_)
        top1.append(t)
    rng = np.random.default_rng(0)
    boot = [spearman(np.asarray(pred)[i], np.asarray(ce)[i])
            for i in (rng.integers(0, len(pred), len(pred)) for _ in range(200))]
    return {"joint_spearman_ce": spearman(pred, ce), "joint_spearman_kl": spearman(pred, kl),
            "joint_spearman_ce_bootstrap_std": float(np.nanstd(boot)),
            "joint_rows": {"pred": pred, "ce": ce, "kl": kl, "top1_drop": top1},
            "joint_spearman_top1_drop": spearman(pred, top1),
            "joint_tau_ce": kendall_tau_b(pred, ce), "joint_allocations": len(allocs),
            "joint_mean_ce": float(np.mean(ce))}


# ---------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hw", default=str(ROOT / "configs" / "vita.yaml"))
    p.add_argument("--blocks", nargs="+", default=["16x16", "8x8"])
    p.add_argument("--calib", type=int, default=1024)
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kappa", type=float, default=None, help="default: the allocator's")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--extra-samples", type=int, nargs="*", default=[8],
                   help="also fisher and ggn with this many samples per image (first-order "
                        "off): is a curvature's gap sampling noise?")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--joint", type=int, default=40,
                   help="random whole-model allocations at equal MACs for the joint metric")
    p.add_argument("--joint-target", type=float, default=0.5,
                   help="kept fraction of the linear layers' blocks in those allocations")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--from-json", type=Path, help="only rebuild the table and plot")
    args = p.parse_args(argv)
    if args.quick:
        args.calib, args.test_images, args.blocks, args.joint = 256, 500, ["16x16"], 8
        args.extra_samples = []
    if args.out is None:
        args.out = (ROOT / "build" / "curve_fidelity_quick" if args.quick
                    else ROOT / "bench" / "results" / "curve_fidelity")
    return args


def run(args: argparse.Namespace) -> dict:
    import torch

    from lsp_codesign.allocator import DEFAULT_KAPPA, CurvatureOptions, calibrate
    from lsp_codesign.config import load_config
    from models import DEFAULT_MODEL, create_model
    from models.data import calibration_loader, test_loader

    torch.set_num_threads(args.threads)
    kappa = DEFAULT_KAPPA if args.kappa is None else args.kappa
    name = DEFAULT_MODEL
    model = create_model(name).eval()
    xs, ys = zip(*test_loader(name, args.test_images, batch_size=500))
    damage = Damage(model, torch.cat(xs), torch.cat(ys))
    result = {"settings": {"model": name, "calib": args.calib, "test_images": len(damage.labels),
                           "seed": args.seed, "kappa": kappa, "grid": GRID, "tau_at": TAU_AT,
                           "hw": os.path.relpath(args.hw, ROOT), "threads": args.threads,
                           "torch": torch.__version__},
              "dense_ce": damage.ref_ce, "blocks": {}}
    for block in args.blocks:
        cfg = load_config(args.hw, block=block)
        loader = calibration_loader(name, args.calib, args.seed, batch_size=64)
        modes: dict[str, dict] = {}
        timings = {}
        for curv in CURVATURES:
            # the first-order term and the Taylor score need gbar: collect it in the same pass
            opts = CurvatureOptions.resolve(curv, first_order="on")
            t0 = time.perf_counter()
            cal = calibrate(model, loader, block_k=cfg.block_k, block_n=cfg.block_n,
                            options=opts, seed=args.seed, progress=False, model_name=name)
            timings[curv] = time.perf_counter() - t0
            modes.update(curvature_curves(cal, cfg, kappa))
        for curv in ("fisher", "ggn")[:len(args.extra_samples) and 2]:
            for samples in args.extra_samples:
                opts = CurvatureOptions.resolve(curv, samples=samples, first_order="on")
                cal = calibrate(model, loader, block_k=cfg.block_k, block_n=cfg.block_n,
                                options=opts, seed=args.seed, progress=False, model_name=name)
                modes.update(curvature_curves(cal, cfg, kappa, first_orders=(False,)))
        modes.update(reference_curves(model, loader, cal, cfg, kappa))
        res = {"calibration_s": timings, "modes": {}}
        allocs = None
        for mode, curves in modes.items():
            t0 = time.perf_counter()
            rows = points(curves, damage)
            metrics = score_mode(rows, curves)
            if allocs is None:
                allocs = random_allocations(curves, args.joint, args.joint_target, args.seed)
            metrics.update(joint_scores(curves, allocs, damage))
            res["modes"][mode] = {"metrics": metrics, "rows": rows}
            m = metrics
            print(f"{block} {mode:45s} spearman CE {m['spearman_ce']:.3f}  KL "
                  f"{m['spearman_kl']:.3f}  tau50 {m['tau_50']:.3f}  below0 "
                  f"{m['curves_below_zero']}  joint {m['joint_spearman_ce']:.3f}  "
                  f"({time.perf_counter() - t0:.0f} s, {damage.evaluations} evaluations)",
                  flush=True)
        result["blocks"][block] = res
    return result


def table(result: dict) -> str:
    lines = ["| block | mode | Spearman δ~ΔCE | Spearman δ~KL | τ 25% | τ 50% | τ 75% | "
             "median δ/ΔCE | curves < 0 at 100% | mean ΔCE at 50% | joint Spearman Σδ~ΔCE |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for block, res in result["blocks"].items():
        for mode, r in res["modes"].items():
            m = r["metrics"]
            med = "-" if m["median_delta_over_ce"] is None else f"{m['median_delta_over_ce']:.2f}"
            lines.append(f"| {block} | {mode} | {m['spearman_ce']:.3f} | {m['spearman_kl']:.3f} "
                         f"| {m['tau_25']:.2f} | {m['tau_50']:.2f} | {m['tau_75']:.2f} | {med} "
                         f"| {m['curves_below_zero']} | {m['mean_ce_at_50']:.3f} | "
                         f"{m['joint_spearman_ce']:.3f} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    kinds = {"qkv": "#4C72B0", "proj": "#DD8452", "fc1": "#55A868", "fc2": "#C44E52",
             "head": "#8172B3"}
    for block, res in result["blocks"].items():
        modes = list(res["modes"])
        cols = 4
        rows_n = -(-len(modes) // cols)
        fig = Figure(figsize=(4.0 * cols, 3.3 * rows_n), dpi=90, layout="constrained")
        for i, mode in enumerate(modes):
            ax = fig.add_subplot(rows_n, cols, i + 1)
            rows = [r for r in res["modes"][mode]["rows"] if r["frac"] not in (0.25, 0.75)]
            for kind, color in kinds.items():
                sel = [r for r in rows if r["layer"].split(".")[-1] == kind]
                ax.scatter([max(r["ce"], 1e-5) for r in sel], [r["delta"] for r in sel],
                           s=8, color=color, label=kind)
            ax.set_xscale("log")
            ax.set_yscale("symlog", linthresh=1e-5)
            m = res["modes"][mode]["metrics"]
            ax.set_title(f"{mode}\nρ={m['spearman_ce']:.2f}  τ50={m['tau_50']:.2f}",
                         fontsize=8)
            ax.set_xlabel("measured CE increase", fontsize=7)
            ax.set_ylabel("predicted δ", fontsize=7)
            ax.tick_params(labelsize=6)
            if i == 0:
                ax.legend(fontsize=6)
        fig.suptitle(f"vit-mnist, block {block}: predicted distortion against measured damage "
                     "(one layer pruned at a time)", fontsize=10)
        out = path.with_name(f"{path.stem}_{block}.png")
        fig.savefig(out)
        print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_json:
        result = json.loads(args.from_json.read_text())
    else:
        t0 = time.perf_counter()
        result = run(args)
        result["seconds"] = time.perf_counter() - t0
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, separators=(",", ":")))
        tmp.replace(args.out.with_suffix(".json"))
    print(table(result))
    plot(result, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
