"""Whitened exits with float32 or float64 scatter products: fit time and agreement.

The within-class scatter of float32 torch features is accumulated as one
float32 product of the rows centred on their class's mean in the batch plus
the batch's between-class part in float64 (the default), or as one float64
product (``ClassStatsAccumulator.float32_products = False``, the behaviour
before 0.2). For trained networks on Fashion-MNIST (the ResNet-20 of the
other benchmarks and the light 6-block CNN of ``bench_gpu.py``) this fits
whitened exits (``metric="mahalanobis", pooling="avg4"``) both ways on the
same training rows, interleaved over ``--rounds`` rounds that also time one
plain forward pass, and reports:

* fit time against the forward pass (median of per-round ratios);
* per stage: the relative difference of the within-class covariances
  (Frobenius norm), the largest change of an exit probability on the test
  rows and the fraction of test rows whose exit prediction changes;
* routed test accuracy and FLOPs at each FLOP target, and the fraction of
  test rows whose prediction or exit stage differs.

A control fit with float64 products without the first training row shows
how much the same figures move under the smallest change of the data.

Run: ``python benchmarks/bench_scatter.py`` (about 15 minutes on 2 CPU cores;
``--networks light_cnn`` alone takes 3). On a small Linux machine, time it
with ``MALLOC_MMAP_THRESHOLD_=4000000000 MALLOC_TRIM_THRESHOLD_=4000000000
MALLOC_TOP_PAD_=268435456`` (see ``bench_allocator.py``): otherwise every
activation above glibc's 32 MiB mmap limit is returned to the system and
faulted in again, and forward times vary threefold between rounds. Needs the Debian package
``dataset-fashion-mnist``. Results: ``benchmarks/results/scatter.{json,md}``.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command, load_fashion, machine, trained_resnet, write  # noqa: E402
from bench_gpu import full_pass, trained_light_cnn  # noqa: E402

#: Fit settings: (float32 products?, first training row used); the last one is a control.
MODES = {"float32": (True, 0), "float64": (False, 0), "float64, one row fewer": (False, 1)}


def _fit(stages, Xtr, ytr, mode, args):
    from sklearn_e2cm import EarlyExitClassMeans
    from sklearn_e2cm.exits.statistics import ClassStatsAccumulator

    products, first = MODES[mode]
    ClassStatsAccumulator.float32_products = products
    try:
        est = EarlyExitClassMeans(stages=stages, flops_target=args.targets[0],
                                  metric="mahalanobis", pooling="avg4",
                                  batch_size=args.batch_size, random_state=0)
        t0 = time.perf_counter()
        est.fit(Xtr[first:], ytr[first:])
        return time.perf_counter() - t0, est
    finally:
        ClassStatsAccumulator.float32_products = True


def compare(name, net, Xtr, ytr, Xte, yte, args):
    import torch

    from sklearn_e2cm.stages import split_into_stages

    Xtr_t, Xte_t = torch.from_numpy(Xtr), torch.from_numpy(Xte)
    stages = split_into_stages(net, Xte_t[:2])
    modes = list(MODES)
    times = {m: [] for m in modes}
    forward, ests = [], {}
    for r in range(args.rounds):
        order = modes if r % 2 == 0 else modes[::-1]
        t0 = time.perf_counter()
        full_pass(stages, Xtr_t, args.batch_size)
        forward.append(time.perf_counter() - t0)
        for m in order:
            t, ests[m] = _fit(stages, Xtr_t, ytr, m, args)
            times[m].append(t)
        print(name, r, forward[-1], {m: times[m][-1] for m in modes}, flush=True)
    fit = {m: {"fit_s": float(np.median(times[m])), "forward_s": float(np.median(forward)),
               "ratio": float(np.median(np.array(times[m]) / np.array(forward)))}
           for m in modes}
    ref = ests["float64"]
    ref_probas = list(ref.staged_predict_proba(Xte_t))
    ref_covs = [s.within_class_covariance() for s in ref.class_statistics_.stages]
    stage_rows, routed = [], []
    for m in (modes[0], modes[2]):  # against float64 products on all the rows
        est = ests[m]
        covs = [s.within_class_covariance() for s in est.class_statistics_.stages]
        for j, (pa, pb) in enumerate(zip(est.staged_predict_proba(Xte_t), ref_probas)):
            if j >= len(covs):
                break
            ca, cb = covs[j], ref_covs[j]
            stage_rows.append({
                "fit": m, "stage": j, "dim": int(ca.shape[0]),
                "cov_rel_diff": float(np.linalg.norm(ca - cb) / np.linalg.norm(cb)),
                "max_proba_diff": float(np.abs(pa - pb).max()),
                "pred_changed": float(np.mean(pa.argmax(1) != pb.argmax(1))),
                "acc_float64": float(np.mean(ref.classes_[pb.argmax(1)] == yte)),
            })
        for t in args.targets:
            res = {}
            for k, e in ((m, est), ("float64", ref)):
                e.set_operating_point(flops_target=t)
                res[k] = e.route(Xte_t)
            ra, rb = res[m], res["float64"]
            routed.append({
                "fit": m, "phi": t,
                "acc": [float(np.mean(r.y_pred == yte)) for r in (ra, rb)],
                "flops": [float(r.flops.mean()) for r in (ra, rb)],
                "rows_changed": float(np.mean((ra.y_pred != rb.y_pred)
                                              | (ra.exit_stage != rb.exit_stage))),
            })
    return {"network": name, "fit": fit, "stages": stage_rows, "routed": routed}


def main(argv=None):
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--networks", nargs="+", default=["resnet20", "light_cnn"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--targets", type=float, nargs="+", default=[0.15, 0.3, 0.5])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--name", default="scatter")
    args = p.parse_args(argv)
    Xtr, ytr, Xte, yte = load_fashion()
    Xtr, Xte = Xtr.reshape(-1, 1, 28, 28), Xte.reshape(-1, 1, 28, 28)
    out = []
    for name in args.networks:
        net = (trained_resnet(Xtr, ytr, epochs=args.epochs)[0] if name == "resnet20"
               else trained_light_cnn(Xtr, ytr, epochs=args.epochs))
        out.append(compare(name, net.eval(), Xtr, ytr, Xte, yte, args))
    dev = f"CPU ({torch.get_num_threads()} threads)"
    lines = ["# Whitened exits: float32 vs float64 scatter products", "",
             f"Command: `{command('bench_scatter.py', argv)}`  ",
             f"Device: **{dev}**; torch {torch.__version__}; fit on the 60k training images, "
             f"batch {args.batch_size}, `metric=\"mahalanobis\", pooling=\"avg4\"`; times are "
             f"medians of {args.rounds} interleaved rounds (a forward pass, then each fit).", "",
             "| network | products | fit (s) | forward (s) | fit / forward |", "|---|---|---|---|---|"]
    for o in out:
        for m, f in o["fit"].items():
            lines.append(f"| {o['network']} | {m} | {f['fit_s']:.2f} | {f['forward_s']:.2f} | "
                         f"{f['ratio']:.2f} |")
    lines += ["", "Per exit, against float64 products on all the training rows (test rows). "
              "The `float64, one row fewer` rows are a control: the same float64 products "
              "without the first training row, the smallest change of the data.", "",
              "| network | fit | stage | D | covariance rel. diff | max Δ probability | "
              "predictions changed | exit accuracy (float64) |",
              "|---|---|---|---|---|---|---|---|"]
    for o in out:
        for s in o["stages"]:
            lines.append(f"| {o['network']} | {s['fit']} | {s['stage']} | {s['dim']} | "
                         f"{s['cov_rel_diff']:.1e} | {s['max_proba_diff']:.1e} | "
                         f"{s['pred_changed']:.4f} | {s['acc_float64']:.4f} |")
    lines += ["", "Routed test rows, against float64 products on all the training rows:", "",
              "| network | fit | φ | accuracy (this / float64) | FLOPs (this / float64) | "
              "rows with another prediction or exit |", "|---|---|---|---|---|---|"]
    for o in out:
        for r in o["routed"]:
            lines.append(f"| {o['network']} | {r['fit']} | {r['phi']:.2f} | "
                         f"{r['acc'][0]:.4f} / {r['acc'][1]:.4f} | "
                         f"{r['flops'][0]:.4f} / {r['flops'][1]:.4f} | {r['rows_changed']:.4f} |")
    write(args.name, {"device": dev, "machine": machine(), "args": vars(args), "results": out},
          "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
