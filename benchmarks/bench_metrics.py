"""Exit metrics on Fashion-MNIST: paper's Euclidean exits vs whitened class means.

Same network as bench_torch.py (ResNet-20, width 16, trained by the package's
own helper, cached). For each configuration the estimator is fitted once on
the 60k training images (thresholds tuned on the training set, as the paper
does) and evaluated on the 10k test images at several FLOP targets:

* Euclidean on flattened stage outputs, with eq. 4 normalisation (the paper)
* Euclidean on flattened stage outputs, without normalisation
* Euclidean on 4×4 average-pooled stage outputs
* Mahalanobis (shared within-class covariance, OAS shrinkage) on 4×4
  average-pooled stage outputs

The SDN column (internal classifiers trained one epoch on the frozen network,
measured by a colleague with the same recipe) is quoted from the issue for
comparison.

Run: ``python benchmarks/bench_metrics.py``; results in
``benchmarks/results/metrics.{json,md}``.
"""

import argparse
import sys
import time

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from _common import load_fashion, machine, plain_forward, trained_resnet, write  # noqa: E402

SDN_REFERENCE = {0.15: 0.841, 0.20: 0.862, 0.30: 0.908, 0.50: 0.916}

CONFIGS = {
    "euclidean": dict(metric="euclidean", pooling=None, normalize=True),
    "euclidean, no eq. 4": dict(metric="euclidean", pooling=None, normalize=False),
    "euclidean, avg4": dict(metric="euclidean", pooling="avg4", normalize=True),
    "mahalanobis, avg4": dict(metric="mahalanobis", pooling="avg4"),
}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS))
    p.add_argument("--targets", type=float, nargs="+", default=[0.15, 0.2, 0.25, 0.3, 0.5])
    args = p.parse_args()

    import torch

    from sklearn_e2cm import EarlyExitClassMeans
    from sklearn_e2cm.stages import split_into_stages

    torch.set_num_threads(args.threads)
    Xtr, ytr, Xte, yte = load_fashion(args.n_train, None)
    net, _ = trained_resnet(Xtr, ytr, epochs=args.epochs)
    stages = split_into_stages(net)
    t_fwd, _ = plain_forward(net, Xtr, args.batch_size)
    _, pred = plain_forward(net, Xte, args.batch_size)
    base_acc = float(np.mean(pred == yte))

    results = {}
    for name in args.configs:
        cfg = CONFIGS[name]
        t0 = time.perf_counter()
        est = EarlyExitClassMeans(stages=stages, batch_size=args.batch_size, random_state=0,
                                  **cfg)
        est.fit(Xtr, ytr)
        fit_s = time.perf_counter() - t0
        staged = [float(np.mean(p == yte)) for p in est.staged_predict(Xte)]
        accs = {}
        for phi in args.targets:
            est.set_operating_point(flops_target=phi)
            r = est.route(Xte)
            accs[phi] = {"accuracy": float(np.mean(r.y_pred == yte)),
                         "test_flops": float(r.flops.mean())}
        results[name] = {
            "params": cfg, "fit_s": fit_s, "fit_over_forward": fit_s / t_fwd,
            "fit_breakdown_s": dict(est._fit_times), "per_stage_accuracy": staged,
            "exit_flops": est.exit_flops_.tolist(),
            "memory_overhead_bytes": est.memory_overhead_bytes_, "targets": accs,
        }
        print(name, f"fit {fit_s:.1f}s", {k: round(v["accuracy"], 4) for k, v in accs.items()})

    header = "| φ | " + " | ".join(args.configs) + " | SDN ICs, 1 epoch (issue) |"
    md = [
        "# Exit metrics: ResNet-20 (width 16), Fashion-MNIST, test accuracy at a FLOP target",
        "",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"Base network test accuracy {base_acc:.4f}; one plain forward pass over the training "
        f"set {t_fwd:.1f} s.",
        "",
        header,
        "|" + "---|" * (len(args.configs) + 2),
    ]
    for phi in args.targets:
        cells = [f"{results[c]['targets'][phi]['accuracy']:.3f} "
                 f"({results[c]['targets'][phi]['test_flops']:.3f})" for c in args.configs]
        sdn = SDN_REFERENCE.get(round(phi, 2))
        md.append(f"| {phi:.2f} | " + " | ".join(cells) + f" | {sdn if sdn else '-'} |")
    md += ["", "Cells: test accuracy (test FLOPs).", "",
           "| configuration | fit (s) | fit / forward | per-stage accuracy (first → last) |",
           "|---|---|---|---|"]
    for c in args.configs:
        r = results[c]
        md.append(f"| {c} | {r['fit_s']:.1f} | {r['fit_over_forward']:.2f} | "
                  + " ".join(f"{a:.3f}" for a in r["per_stage_accuracy"]) + " |")
    payload = {"command": "python " + " ".join(sys.argv), "machine": machine(),
               "base_test_accuracy": base_acc, "plain_forward_train_s": t_fwd,
               "sdn_reference": SDN_REFERENCE, "results": results}
    write("metrics", payload, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
