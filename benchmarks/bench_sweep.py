"""The threshold sweep behind ``threshold_search="hull"``: speed and held-out accuracy.

Two searches over the same exit tables:

* ``coordinate``: one path of exact coordinate ascent on accuracy - λ·cost
  (what ``threshold_search="hull"`` uses); every FLOP target is served from
  the same path, so its cost does not grow with the number of targets;
* ``bisect``: the paper's random start and alternating bisection, once per
  target (``threshold_search="bisect-hull"``), averaged over 3 seeds.

Tables: the exit tables of E²CM on the 3-epoch ResNet-20 of the other
benchmarks (Fashion-MNIST; thresholds tuned on the 60k training images, as
the paper does; held-out accuracy on the 10k test images), with the paper's
Euclidean exits and with whitened exits on ``avg4`` pooling, plus a synthetic
60k x 11 table with confidences piled up near 1. Sweep time is CPU time of
this process with one BLAS thread, best of 3 (1000 targets).

Run: ``python benchmarks/bench_sweep.py`` (``--quick``: a small generated
table, seconds); results in ``benchmarks/results/sweep.{json,md}``.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
from _common import machine, write  # noqa: E402

from sklearn_e2cm._thresholds import ExitTable, sweep_with_extremes, time_sharing, upper_hull  # noqa: E402,E501

PHIS = np.round(np.arange(0.05, 0.951, 0.01), 3)
TARGETS = np.linspace(0, 1, 1001)[1:]


def synthetic(n, m, seed=0, piled=True):
    """A table whose confidences pile up near 1 (as whitened exits' do)."""
    rng = np.random.default_rng(seed)
    acc = np.linspace(0.6, 0.92, m)
    if piled:
        conf = 1 - rng.exponential(1e-3, (n, m)) * rng.random((n, 1)) ** 3
    else:
        conf = rng.random((n, m)) ** 0.5
    conf = np.clip(conf, 0, 1).astype(np.float32)
    correct = rng.random((n, m)) < acc[None, :] * (0.5 + 0.5 * conf)
    ef = np.full(m, 0.02)
    ef[-1] = 0
    return ExitTable(conf, correct, np.ones(m), ef, last_head=False)


def resnet_tables():
    """(name, tuning table, test table) of the ResNet-20 benchmark network."""
    import torch

    from _common import load_fashion, trained_resnet

    from sklearn_e2cm import EarlyExitClassMeans
    from sklearn_e2cm._exit_estimator import tuning_table_of
    from sklearn_e2cm.stages import split_into_stages

    torch.set_num_threads(1)
    Xtr, ytr, Xte, yte = load_fashion()
    net, _ = trained_resnet(Xtr, ytr, epochs=3)
    stages = split_into_stages(net)
    out = []
    for name, kw in [("resnet20_euclidean", {}),
                     ("resnet20_whitened_avg4", {"metric": "mahalanobis", "pooling": "avg4"})]:
        est = EarlyExitClassMeans(stages=stages, flops_target=None, batch_size=512,
                                  device="cpu", **kw).fit(Xtr, ytr)
        out.append((name, tuning_table_of(est), est.exit_table(Xte, yte)))
    return out


def sweep_cpu_time(table, method, rounds=3):
    best = np.inf
    for _ in range(rounds):
        fresh = ExitTable(table.conf, table.correct, table.stage_flops, table.exit_flops,
                          table.last_head)  # its cached views are part of the cost
        t0 = time.process_time()
        sweep_with_extremes(fresh, TARGETS, method=method, random_state=0)
        best = min(best, time.process_time() - t0)
    return best


def held_out(tune, test, method, seed):
    """Held-out accuracy served at each φ from the tuning hull (expected over time sharing)."""
    _, T, c, s = sweep_with_extremes(tune, TARGETS, method=method, random_state=seed)
    hull = upper_hull(c, s)
    _, test_score = test.evaluate_many(T[hull])
    out = []
    for phi in PHIS:
        verts, w = time_sharing(c[hull], phi)
        out.append(float(w @ test_score[verts]))
    return np.array(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small generated tables (seconds)")
    ap.add_argument("--name", default=None, help="results file name (default: sweep)")
    args = ap.parse_args(argv)
    if args.quick:
        tables = [("synthetic_2k_6", synthetic(2000, 6, 0), synthetic(2000, 6, 1))]
        timed = [("synthetic_2k_6", tables[0][1])]
    else:
        tables = resnet_tables()
        timed = [(n, t) for n, t, _ in tables] + [("synthetic_60k_11_piled",
                                                   synthetic(60000, 11))]
    payload = {"machine": machine(), "phis": PHIS.tolist(), "timing": {}, "held_out": {}}
    lines = ["# Threshold sweep: coordinate-ascent path vs the paper's bisection", "",
             "Command: `python benchmarks/bench_sweep.py`" + (" --quick" if args.quick else "")
             + f" ({payload['machine']['cpu_count']} CPU cores; one BLAS thread).", "",
             "## Sweep time, 1000 FLOP targets (CPU s, best of 3)", "",
             "| table | samples x stages | coordinate (`hull`) | bisect (`bisect-hull`) |",
             "|---|---|---|---|"]
    for name, table in timed:
        tc, tb = sweep_cpu_time(table, "coordinate"), sweep_cpu_time(table, "bisect")
        payload["timing"][name] = {"coordinate": tc, "bisect": tb}
        lines.append(f"| {name} | {table.n_samples} x {table.n_stages} | {tc:.3f} | {tb:.3f} |")
    lines += ["", "## Held-out accuracy at the served budget", "",
              "Each φ is served from the tuning hull by time sharing (expected accuracy of the "
              "mixture on the test rows). `bisect` averaged over seeds 0, 1, 2.", "",
              "| table | coordinate - bisect: min (at φ) | mean | max | φ where coordinate "
              "is lower | φ=0.15 | φ=0.2 | φ=0.3 | φ=0.5 |", "|---|---|---|---|---|---|---|---|---|"]
    for name, tune, test in tables:
        co = held_out(tune, test, "coordinate", 0)
        bi = np.mean([held_out(tune, test, "bisect", s) for s in range(3)], axis=0)
        d = co - bi
        base = test.evaluate(np.ones(test.n_stages - 1))[1]
        payload["held_out"][name] = {"coordinate": co.tolist(), "bisect": bi.tolist(),
                                     "base": base}
        at = {phi: int(np.argmin(abs(PHIS - phi))) for phi in (0.15, 0.2, 0.3, 0.5)}
        lower = ", ".join(f"{p:.2f}" for p in PHIS[d < 0]) or "none"
        cells = " | ".join(f"{co[k]:.4f} / {bi[k]:.4f}" for k in at.values())
        lines.append(f"| {name} (base {base:.4f}) | {d.min():+.4f} ({PHIS[d.argmin()]:.2f}) | "
                     f"{d.mean():+.4f} | {d.max():+.4f} | {lower} | {cells} |")
    lines += ["", "Cells at φ: coordinate / bisect."]
    write(args.name or ("sweep_quick" if args.quick else "sweep"), payload,
          "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
