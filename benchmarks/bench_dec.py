"""DEC with early exits (E²CM paper §IV-D, Fig. 4) on Fashion-MNIST or MNIST.

For every seed a :class:`~sklearn_e2cm.DECEarlyExit` is fitted on all 70 000
images (train + test, pixels in [0, 1]; clustering is unsupervised and, as in
the DEC and E²CM papers, evaluated on the data it clusters): the large DEC
784-500-500-2000-10, then DEC_small (500-10) and DEC_middle (500-500-10) on
its frozen first layers, each pretrained and self-trained by the same
procedure. Thresholds are chosen without labels (agreement with the large
DEC; sweep of FLOP targets, upper hull, time sharing). The accuracy–FLOPs
curve of every seed is the clustering accuracy, against the true labels, of
the operating point served at each FLOP target (:meth:`tradeoff_curve`); the
mean curve averages flops and accuracy over seeds at each target, like the
red curve of the paper's Fig. 4.

Reported: the curves (JSON, PNG with one grey curve per seed and the red
mean), and the computation saved at <= 1 and <= 2 points of clustering
accuracy lost against the large DEC, per seed and on the mean curve. The
paper's target on Fashion-MNIST is >= 60 % saved for <= 1 point lost.

Run (full recipe, about an hour per seed on 2 CPU cores)::

    python benchmarks/bench_dec.py --dataset fashion --seeds 0 1 2 3 4 \
        --pretrain-epochs 200 --max-iter 20000

MNIST in IDX form is read with ``--dataset mnist --data-home DIR`` (see
:func:`sklearn_e2cm.datasets.load_mnist`). Results go to
``benchmarks/results/dec_<dataset>.{json,md,png}`` (``--tag`` appends a
suffix); the JSON is rewritten after every seed.
"""

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine  # noqa: E402

PAPER = {
    "fashion": "about 1 point of clustering accuracy lost for 60 % of the computation saved",
    "mnist": "about 6 points of clustering accuracy lost for 60 % of the computation saved",
}


def load(dataset, data_home, n_samples, seed=0):
    from sklearn_e2cm.datasets import load_fashion_mnist, load_mnist

    loader = {"fashion": load_fashion_mnist, "mnist": load_mnist}[dataset]
    X, y = loader(data_home=data_home, subset="all", flatten=True, return_X_y=True)
    if n_samples and n_samples < len(y):
        idx = np.random.RandomState(seed).choice(len(y), n_samples, replace=False)
        X, y = X[idx], y[idx]
    return np.ascontiguousarray(X, dtype=np.float32), y


def saved_at(flops, score, base_score, max_loss):
    """Computation saved (1 - flops) by the cheapest point within ``max_loss`` of the base."""
    flops, score = np.asarray(flops), np.asarray(score)
    ok = score >= base_score - max_loss - 1e-12
    return float(1.0 - flops[ok].min()) if ok.any() else 0.0


def individual_costs(ee):
    """Normalised cost of every DEC alone: its shared layers, tail and centres."""
    c, e = ee.stage_flops_, ee.exit_flops_
    return [float((c[: j + 1].sum() + e[j]) / c.sum()) for j in range(len(c) - 1)] + [1.0]


def plot(path, curves, mean_curve, vlines, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for i, c in enumerate(curves):
        ax.plot(c["flops"], c["score"], color="0.6", lw=1, label="one seed" if i == 0 else None)
    ax.plot(mean_curve["flops"], mean_curve["score"], color="red", lw=2, label="mean")
    for name, x in vlines.items():
        ax.axvline(x, color="0.3", ls=":", lw=1)
        ax.text(x, 0.02, f" {name}", transform=ax.get_xaxis_transform(), rotation=90,
                fontsize=8, va="bottom")
    ax.set_xlabel("FLOPs (fraction of the large DEC)")
    ax.set_ylabel("clustering accuracy")
    ax.set_xlim(0, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(res):
    s = res["settings"]
    lines = [
        f"# DEC with early exits on {res['dataset']} ({res['n_samples']} images)",
        "",
        f"Command: `{res['command']}`",
        "",
        *([res["note"], ""] if res.get("note") else []),
        f"Settings: pretrain_epochs={s['pretrain_epochs']}, max_iter={s['max_iter']}, "
        f"update_interval={s['update_interval']}, tol={s['tol']}, batch_size={s['batch_size']}, "
        f"n_init={s['n_init']}, exits={s['exits']}, torch threads={s['threads']}, "
        f"seeds={s['seeds']}.",
        "",
        "| seed | large DEC acc | DEC_small acc | DEC_middle acc | acc @ 0.4 FLOPs | "
        "saved @ ≤1 pt | saved @ ≤2 pt | fit (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res["per_seed"]:
        heads = r["exit_accuracy"]
        lines.append(
            f"| {r['seed']} | {r['large_accuracy']:.4f} | {heads.get('small', float('nan')):.4f} "
            f"| {heads.get('middle', float('nan')):.4f} | {r['accuracy_at_0.4']:.4f} "
            f"| {r['saved_1pt']:.1%} | {r['saved_2pt']:.1%} | {r['fit_seconds']:.0f} |"
        )
    if res.get("mean"):
        m = res["mean"]
        lines.append(
            f"| mean curve | {m['large_accuracy']:.4f} | | | {m['accuracy_at_0.4']:.4f} "
            f"| {m['saved_1pt']:.1%} | {m['saved_2pt']:.1%} | |"
        )
    lines += [
        "",
        f"k-means on raw pixels (n_init={res['kmeans']['n_init']}): accuracy "
        f"{res['kmeans']['accuracy']:.4f}." if res.get("kmeans") else "",
        "",
        f"Paper ({res['dataset']}): {PAPER[res['dataset']]}. "
        f"Target met (≥ 60 % saved at ≤ 1 point, mean curve): "
        f"**{'yes' if res.get('mean', {}).get('saved_1pt', 0) >= 0.6 else 'no'}**.",
        "",
        f"Individual costs (DEC_small, DEC_middle, large): "
        f"{', '.join(f'{v:.3f}' for v in res['individual_costs'].values())}.",
        "",
    ]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=["fashion", "mnist"], default="fashion")
    p.add_argument("--data-home", default=None, help="folder with the IDX files (mnist)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--n-samples", type=int, default=None, help="subsample (default: all 70k)")
    p.add_argument("--pretrain-epochs", type=int, default=200)
    p.add_argument("--max-iter", type=int, default=20000, help="self-training mini-batches")
    p.add_argument("--update-interval", type=int, default=140)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--n-init", type=int, default=20, help="k-means restarts of DEC's init")
    p.add_argument("--hidden", type=int, nargs="+", default=[500, 500, 2000])
    p.add_argument("--exits", nargs="+", default=["small", "middle"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--kmeans-init", type=int, default=3,
                   help="restarts of the k-means baseline on raw pixels (0 skips it)")
    p.add_argument("--tag", default="", help="suffix of the result files")
    p.add_argument("--note", default="", help="free text stored with the results")
    p.add_argument("--verbose", type=int, default=0)
    args = p.parse_args()

    import torch
    from sklearn.cluster import KMeans

    from sklearn_e2cm import DECEarlyExit
    from sklearn_e2cm.metrics import clustering_accuracy

    torch.set_num_threads(args.threads)
    X, y = load(args.dataset, args.data_home, args.n_samples)
    name = f"dec_{args.dataset}{args.tag}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    targets = np.round(np.arange(0.01, 1.0 + 1e-9, 0.005), 4)
    settings = dict(
        pretrain_epochs=args.pretrain_epochs, max_iter=args.max_iter,
        update_interval=args.update_interval, tol=args.tol, batch_size=args.batch_size,
        n_init=args.n_init, hidden=args.hidden, exits=args.exits, threads=args.threads,
        seeds=args.seeds, n_samples=len(y),
    )
    res = {
        "dataset": args.dataset,
        "n_samples": int(len(y)),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "note": args.note,
        "settings": settings,
        "machine": machine(),
        "targets": targets.tolist(),
        "per_seed": [],
    }
    t_all = time.perf_counter()
    if args.kmeans_init:
        t0 = time.perf_counter()
        km = KMeans(10, n_init=args.kmeans_init, random_state=0).fit(X)
        res["kmeans"] = {"n_init": args.kmeans_init,
                         "accuracy": clustering_accuracy(y, km.labels_),
                         "seconds": time.perf_counter() - t0}
        print(f"k-means on raw pixels: {res['kmeans']['accuracy']:.4f}", flush=True)

    curves = []
    exit_names = [str(e) for e in args.exits]
    for seed in args.seeds:
        t0 = time.perf_counter()
        ee = DECEarlyExit(
            10, hidden=tuple(args.hidden), exits=tuple(
                int(e) if e.isdigit() else e for e in args.exits),
            pretrain_epochs=args.pretrain_epochs, max_iter=args.max_iter,
            update_interval=args.update_interval, tol=args.tol, batch_size=args.batch_size,
            n_init=args.n_init, random_state=seed, verbose=args.verbose,
        ).fit(X)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        curve = ee.tradeoff_curve(X, y, targets=targets)
        eval_s = time.perf_counter() - t0
        rows, base = curve.iloc[:-1], curve.iloc[-1]
        curves.append({"flops": np.r_[rows["flops"].to_numpy(), 1.0],
                       "score": np.r_[rows["score"].to_numpy(), base["score"]],
                       "base": float(base["score"])})
        at04 = rows.iloc[int(np.argmin(np.abs(rows["target"].to_numpy() - 0.4)))]
        order = sorted(range(len(ee.exit_depths_)), key=lambda j: ee.exit_depths_[j])
        names = sorted(exit_names, key=lambda e: {"small": 1, "middle": 2}.get(e, None) or int(e))
        r = {
            "seed": seed,
            "fit_seconds": fit_s,
            "eval_seconds": eval_s,
            "large_accuracy": float(base["score"]),
            "exit_accuracy": {names[j]: clustering_accuracy(y, ee.exit_labels_[j]) for j in order},
            "exit_agreement": dict(zip(names, ee.exit_agreement_.tolist())),
            "large_n_iter": int(ee.n_iter_),
            "pretrain_loss_last": float(ee.dec_.pretrain_loss_curve_[-1]),
            "accuracy_at_0.4": float(at04["score"]),
            "flops_at_0.4": float(at04["flops"]),
            "saved_1pt": saved_at(rows["flops"], rows["score"], base["score"], 0.01),
            "saved_2pt": saved_at(rows["flops"], rows["score"], base["score"], 0.02),
            "curve": {k: rows[k].round(6).tolist() for k in ("target", "flops", "score",
                                                              "agreement")},
            "hull_flops": ee._hull_costs.round(6).tolist(),
            "hull_agreement": ee._hull_agreement.round(6).tolist(),
        }
        res["individual_costs"] = dict(zip(names + ["large"], individual_costs(ee)))
        res["cumulative_cost"] = ee.cumulative_cost_.tolist()
        res["stage_flops"] = ee.stage_flops_.tolist()
        res["exit_flops"] = ee.exit_flops_.tolist()
        res["per_seed"].append(r)
        print(f"seed {seed}: large {r['large_accuracy']:.4f}, exits {r['exit_accuracy']}, "
              f"acc@0.4 {r['accuracy_at_0.4']:.4f}, saved@1pt {r['saved_1pt']:.1%}, "
              f"saved@2pt {r['saved_2pt']:.1%}, fit {fit_s:.0f}s", flush=True)

        # the mean curve: flops and accuracy averaged over seeds at each target (and the base)
        mean_flops = np.mean([c["flops"] for c in curves], axis=0)
        mean_score = np.mean([c["score"] for c in curves], axis=0)
        mean_base = float(np.mean([c["base"] for c in curves]))
        i04 = int(np.argmin(np.abs(targets - 0.4)))
        res["mean"] = {
            "large_accuracy": mean_base,
            "accuracy_at_0.4": float(mean_score[i04]),
            "saved_1pt": saved_at(mean_flops, mean_score, mean_base, 0.01),
            "saved_2pt": saved_at(mean_flops, mean_score, mean_base, 0.02),
            "curve": {"target": targets.tolist() + [None],
                      "flops": mean_flops.round(6).tolist(),
                      "score": mean_score.round(6).tolist()},
        }
        res["target_met"] = bool(res["mean"]["saved_1pt"] >= 0.6)
        res["total_seconds"] = time.perf_counter() - t_all
        (RESULTS / f"{name}.json").write_text(json.dumps(res, indent=1, default=float))
        (RESULTS / f"{name}.md").write_text(markdown(res))
        plot(RESULTS / f"{name}.png", curves, {"flops": mean_flops, "score": mean_score},
             res["individual_costs"],
             f"DEC + E²CM on {args.dataset} ({len(y)} images, {len(curves)} seed(s))")
    print(markdown(res))


if __name__ == "__main__":
    main()
