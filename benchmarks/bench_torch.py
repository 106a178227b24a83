"""Torch backend benchmark on Fashion-MNIST (issue: torch backend).

Trains (or loads from the cache) a ResNet-20 (width 16) with the package's own
helper, wraps it in EarlyExitClassMeans and measures, against the same
network's plain forward pass at the same batch size:

* routed inference wall time at φ = 0.3 and 0.5 against the *ideal* time (the
  plain network's own per-stage times, measured on full batches, summed over
  the stages each sample actually ran), the wall-time ratio to the full
  network and the FLOP ratio;
* fit time (class means + eq. 4 + thresholds for 1000 targets) against one
  plain forward pass over the training set, with its breakdown;
* the sweep of 1000 FLOP targets on the cached 60k × 11 arrays;
* peak memory of fit above the loaded data (in a fresh subprocess).

Run: ``python benchmarks/bench_torch.py`` (needs the Debian package
``dataset-fashion-mnist``). Results: ``benchmarks/results/torch.{json,md}``.
"""

import argparse
import json
import subprocess
import sys
import time

import numpy as np

ROUNDS = 5

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    head_times,
    load_fashion,
    machine,
    plain_forward,
    stage_times,
    trained_resnet,
    write,
)


def _rss_mib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


def _pooling(text):
    """``--pooling`` as the estimator's ``pooling=``: a literal such as ``(8,2,2)`` or a name."""
    import ast

    if text is None:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a named pooling such as "avg4"


def memory_child(args):
    """Fit once in this (fresh) process; print data-loaded RSS and peak RSS."""
    import torch

    from sklearn_e2cm import EarlyExitClassMeans
    from sklearn_e2cm.stages import split_into_stages

    torch.set_num_threads(args.threads)
    Xtr, ytr, _, _ = load_fashion(args.n_train, None)
    net, _ = trained_resnet(Xtr, ytr, epochs=args.epochs, verbose=0)
    stages = split_into_stages(net)
    before = _rss_mib("VmRSS")
    EarlyExitClassMeans(stages=stages, flops_target=0.3, batch_size=args.batch_size,
                        pooling=_pooling(args.pooling), calibration=args.calibration,
                        random_state=0).fit(Xtr, ytr)
    print(json.dumps({"rss_before_mib": before, "peak_mib": _rss_mib("VmHWM")}))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pooling", default=None,
                   help="pooling= of the estimator, e.g. '(8,2,2)' (paper §IV-B) or 'avg4'")
    p.add_argument("--calibration", type=float, default=None,
                   help="calibration= of the estimator (tune on a held-out fraction)")
    p.add_argument("--targets", type=float, nargs="+", default=[0.15, 0.2, 0.25, 0.3, 0.5])
    p.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        return memory_child(args)

    import torch

    from sklearn_e2cm import EarlyExitClassMeans
    from sklearn_e2cm._exit_estimator import tuning_table_of
    from sklearn_e2cm._thresholds import sweep
    from sklearn_e2cm.stages import split_into_stages

    torch.set_num_threads(args.threads)
    bs = args.batch_size
    Xtr, ytr, Xte, yte = load_fashion(args.n_train, None)
    net, train_s = trained_resnet(Xtr, ytr, epochs=args.epochs)
    stages = split_into_stages(net)

    plain_forward(net, Xte[:bs], bs)  # warm-up
    t_fwd_before, _ = plain_forward(net, Xtr, bs)

    t0 = time.perf_counter()
    e2cm = EarlyExitClassMeans(stages=stages, flops_target=0.3, batch_size=bs,
                               pooling=_pooling(args.pooling), calibration=args.calibration,
                               random_state=0)
    e2cm.fit(Xtr, ytr)
    t_fit = time.perf_counter() - t0
    fit_times = dict(getattr(e2cm, "_fit_times", {}))
    # the 2 cores are shared: the reference is the mean of a forward pass before and after
    t_fwd_after, _ = plain_forward(net, Xtr, bs)
    t_fwd_train = 0.5 * (t_fwd_before + t_fwd_after)

    table = tuning_table_of(e2cm)
    t0 = time.perf_counter()
    sweep(table, np.linspace(0, 1, 1001)[1:], random_state=0)
    t_sweep = time.perf_counter() - t0

    # routed inference: ROUNDS interleaved rounds of (per-stage times of the plain network,
    # its full forward pass, every routed target); medians over the rounds
    per_stage_r, per_head_r, fwd_test_r, walls = [], [], [], {phi: [] for phi in args.targets}
    routes, active = {}, {}
    for _ in range(ROUNDS):
        per_stage_r.append(stage_times(list(stages), Xte, bs))
        per_head_r.append(head_times(e2cm, Xte, bs))
        t, pred = plain_forward(net, Xte, bs)
        fwd_test_r.append(t)
        for phi in args.targets:
            e2cm.set_operating_point(flops_target=phi)
            e2cm.route(Xte[:bs])  # warm-up
            t0 = time.perf_counter()
            routes[phi] = e2cm.route(Xte)
            walls[phi].append(time.perf_counter() - t0)
            # heads the router runs: a threshold below 1 in some time-sharing component
            act = np.ones(e2cm.n_stages_, bool)
            act[:-1] = (e2cm.mixture_thresholds_ < 1.0).any(axis=0)
            active[phi] = act
    base_acc = float(np.mean(pred == yte))
    per_stage = np.median(np.stack(per_stage_r), axis=0)
    per_head = np.median(np.stack(per_head_r), axis=0)
    t_fwd_test = float(np.median(fwd_test_r))
    cum_t = np.cumsum(per_stage)
    rows = []
    for phi in args.targets:
        r = routes[phi]
        wall = float(np.median(walls[phi]))
        ideal = float(cum_t[r.exit_stage].sum())
        # the same with the exit heads' own time (on full batches) for the stages each
        # sample passed: what is left of the gap is the router's own overhead
        cum_h = np.cumsum(per_head * active[phi])
        ideal_h = ideal + float(cum_h[r.exit_stage].sum())
        # the machine's speed drifts: also pair each round's routed time with that round's
        # per-stage times and plain forward pass
        ideal_r = [float(np.cumsum(ps)[r.exit_stage].sum()) for ps in per_stage_r]
        ratio_r = [w / i for w, i in zip(walls[phi], ideal_r)]
        full_r = [w / f for w, f in zip(walls[phi], fwd_test_r)]
        rows.append({
            "flops_target": phi, "test_flops": float(r.flops.mean()),
            "test_accuracy": float(np.mean(r.y_pred == yte)),
            "wall_s": wall, "wall_runs_s": walls[phi], "ideal_s": ideal,
            "wall_over_ideal": wall / ideal, "wall_over_full": wall / t_fwd_test,
            "ideal_with_heads_s": ideal_h, "wall_over_ideal_with_heads": wall / ideal_h,
            "wall_over_ideal_per_round": ratio_r, "wall_over_full_per_round": full_r,
            "exits": r.exit_counts(e2cm.n_stages_).tolist(),
        })

    mem = subprocess.run(
        [sys.executable, __file__, "--memory-child", "--epochs", str(args.epochs),
         "--batch-size", str(bs), "--threads", str(args.threads)]
        + (["--n-train", str(args.n_train)] if args.n_train else [])
        + (["--pooling", args.pooling] if args.pooling else [])
        + (["--calibration", str(args.calibration)] if args.calibration else []),
        capture_output=True, text=True, check=True,
    )
    mem = json.loads(mem.stdout.strip().splitlines()[-1])

    payload = {
        "command": " ".join(["python"] + sys.argv),
        "machine": machine(),
        "network": "resnet_small(depth=20, width=16)",
        "train_seconds": train_s, "epochs": args.epochs, "batch_size": bs,
        "n_train": len(ytr), "n_test": len(yte), "n_stages": e2cm.n_stages_,
        "base_test_accuracy": base_acc,
        "plain_forward_train_s": t_fwd_train,
        "plain_forward_train_before_after_fit_s": [t_fwd_before, t_fwd_after],
        "plain_forward_test_s": t_fwd_test, "plain_forward_test_runs_s": fwd_test_r,
        "rounds": ROUNDS,
        "stage_seconds_per_sample": per_stage.tolist(),
        "head_seconds_per_sample": per_head.tolist(),
        "stage_flops": e2cm.stage_flops_.tolist(), "exit_flops": e2cm.exit_flops_.tolist(),
        "memory_overhead_bytes": e2cm.memory_overhead_bytes_,
        "fit_s": t_fit, "fit_over_forward": t_fit / t_fwd_train, "fit_breakdown_s": fit_times,
        "sweep_1000_targets_s": t_sweep,
        "fit_peak_mib_above_data": mem["peak_mib"] - mem["rss_before_mib"],
        "routed": rows,
    }
    md = [
        "# Torch backend: ResNet-20 (width 16) on Fashion-MNIST, 2-core CPU",
        "",
        f"Command: `{payload['command']}`  ",
        f"Base test accuracy {base_acc:.4f}; plain forward over {len(ytr)} training images "
        f"{t_fwd_train:.1f} s (mean of {t_fwd_before:.1f} s before and {t_fwd_after:.1f} s "
        f"after the fit; batch {bs}, {args.threads} threads).",
        "",
        f"Routed inference on the {len(yte)} test images: medians over {ROUNDS} interleaved "
        "rounds of (per-stage times of the plain network on full batches, its full forward "
        "pass, each routed target); 'ideal' sums the median per-stage times over the stages "
        "each sample ran.",
        "",
        "| φ | test FLOPs | test acc | wall (s) | ideal (s) | wall / ideal | wall / full "
        "| wall / ideal per round: median (min–max) | wall / full per round: median "
        "| wall / (ideal + heads) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pr = r["wall_over_ideal_per_round"]
        md.append(f"| {r['flops_target']:.2f} | {r['test_flops']:.3f} | {r['test_accuracy']:.4f} |"
                  f" {r['wall_s']:.2f} | {r['ideal_s']:.2f} | {r['wall_over_ideal']:.2f} |"
                  f" {r['wall_over_full']:.2f} | {np.median(pr):.2f} ({min(pr):.2f}–{max(pr):.2f})"
                  f" | {np.median(r['wall_over_full_per_round']):.2f}"
                  f" | {r['wall_over_ideal_with_heads']:.2f} |")
    md += [
        "",
        "'ideal + heads' adds each exit head's own time (stage vector and exit decision, "
        "measured on full batches) for the heads each sample passed: the rest of the gap is "
        "the router's own work (compaction, bookkeeping).",
        "",
        f"- fit: {t_fit:.1f} s = **{t_fit / t_fwd_train:.2f}×** one plain forward pass "
        f"({t_fit / max(t_fwd_before, t_fwd_after):.2f}× to {t_fit / min(t_fwd_before, t_fwd_after):.2f}× "
        f"against the slower / faster of the two) "
        f"(breakdown: {', '.join(f'{k} {v:.1f} s' for k, v in fit_times.items())})",
        f"- sweep of 1000 targets on {len(ytr)} × {e2cm.n_stages_} cached arrays: "
        f"**{t_sweep:.2f} s**",
        f"- peak memory of fit above the loaded data: "
        f"**{payload['fit_peak_mib_above_data']:.0f} MiB**",
        f"- memory overhead of the exits: {e2cm.memory_overhead_bytes_ / 2**20:.2f} MiB",
        "",
    ]
    name = "torch"
    if args.pooling:
        name += "_pool" + "".join(c for c in args.pooling if c.isalnum())
    if args.calibration:
        name += f"_cal{args.calibration:g}"
    write(name, payload, "\n".join(md))


if __name__ == "__main__":
    main()
