"""Internal classifiers (SDN, BranchyNet, BWDS) against and with E²CM on Fashion-MNIST.

The network is the benchmarks' cached ResNet-20 (width 16, 3 epochs); it stays
frozen. Every method is fitted once on the 60k training images (thresholds
tuned on the training set, as the paper does) and served at several FLOP
targets with ``set_operating_point`` (no refit); the table gives the test
accuracy and the measured test FLOPs of every (method, target), and the fit
time.

Run: ``python benchmarks/bench_internal.py [--epochs 1] [--n-train N]``
(needs the Debian package ``dataset-fashion-mnist``). Results:
``benchmarks/results/internal.{json,md,png}``.
"""

import argparse
import sys
import time

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from _common import RESULTS, load_fashion, machine, trained_resnet, write  # noqa: E402

TARGETS = [0.15, 0.2, 0.25, 0.3, 0.5]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=1, help="IC training epochs")
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--pooling", default="avg4",
                   help="feature reduction before the ICs and class means")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import torch

    from sklearn_e2cm import EarlyExitClassMeans, InternalClassifierEarlyExit
    from sklearn_e2cm.stages import split_into_stages

    torch.set_num_threads(args.threads)
    Xtr, ytr, Xte, yte = load_fashion(args.n_train, None)
    net, _ = trained_resnet(Xtr, ytr if args.n_train is None else ytr, epochs=3)
    stages = split_into_stages(net)
    common = dict(batch_size=args.batch_size, random_state=0)
    configs = {
        "E2CM (paper, no pooling)": lambda: EarlyExitClassMeans(stages, **common),
        f"E2CM (whitened, {args.pooling})": lambda: EarlyExitClassMeans(
            stages, metric="mahalanobis", pooling=args.pooling, **common),
        "SDN": lambda: InternalClassifierEarlyExit(
            stages, method="sdn", epochs=args.epochs, pooling=args.pooling, **common),
        "SDN + E2CM (and)": lambda: InternalClassifierEarlyExit(
            stages, method="sdn", epochs=args.epochs, pooling=args.pooling, class_means=True,
            combine="and", **common),
        "SDN + E2CM (or)": lambda: InternalClassifierEarlyExit(
            stages, method="sdn", epochs=args.epochs, pooling=args.pooling, class_means=True,
            combine="or", **common),
        "SDN + whitened E2CM (and)": lambda: InternalClassifierEarlyExit(
            stages, method="sdn", epochs=args.epochs, pooling=args.pooling, class_means=True,
            combine="and", metric="mahalanobis", **common),
        "SDN + whitened E2CM (or)": lambda: InternalClassifierEarlyExit(
            stages, method="sdn", epochs=args.epochs, pooling=args.pooling, class_means=True,
            combine="or", metric="mahalanobis", **common),
        "BranchyNet": lambda: InternalClassifierEarlyExit(
            stages, method="branchynet", epochs=args.epochs, pooling=args.pooling, **common),
        "BWDS": lambda: InternalClassifierEarlyExit(
            stages, method="bwds", epochs=args.epochs, pooling=args.pooling, **common),
    }
    rows, fits = [], {}
    for name, make in configs.items():
        est = make()
        t0 = time.perf_counter()
        est.set_params(flops_target=TARGETS[0]).fit(Xtr, ytr)
        fits[name] = time.perf_counter() - t0
        print(f"{name}: fit {fits[name]:.1f} s", flush=True)
        for phi in TARGETS:
            est.set_operating_point(flops_target=phi)
            r = est.route(Xte)
            rows.append({"method": name, "flops_target": phi,
                         "test_flops": float(r.flops.mean()),
                         "test_accuracy": float(np.mean(r.y_pred == yte))})
    payload = {"command": " ".join(["python"] + sys.argv), "machine": machine(),
               "network": "resnet_small(depth=20, width=16), 3 epochs", "epochs": args.epochs,
               "pooling": args.pooling, "n_train": len(ytr), "fit_seconds": fits,
               "rows": rows}
    md = ["# Internal classifiers and E²CM: ResNet-20 (width 16) on Fashion-MNIST, 2-core CPU",
          "", f"Command: `{payload['command']}`  ",
          f"Thresholds tuned on the {len(ytr)} training images; test accuracy (test FLOPs) "
          f"on the {len(yte)} test images. ICs: pooling {args.pooling!r} + one linear layer, "
          f"{args.epochs} epoch(s) of Adam on the frozen network.", "",
          "| method | fit (s) | " + " | ".join(f"φ = {t}" for t in TARGETS) + " |",
          "|---|---|" + "---|" * len(TARGETS)]
    for name in configs:
        cells = [f"{r['test_accuracy']:.3f} ({r['test_flops']:.2f})"
                 for r in rows if r["method"] == name]
        md.append(f"| {name} | {fits[name]:.0f} | " + " | ".join(cells) + " |")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for name in configs:
            rs = [r for r in rows if r["method"] == name]
            ax.plot([r["test_flops"] for r in rs], [r["test_accuracy"] for r in rs], "o-",
                    label=name)
        ax.set_xlabel("test FLOPs (base model = 1)")
        ax.set_ylabel("test accuracy")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        RESULTS.mkdir(parents=True, exist_ok=True)
        fig.savefig(RESULTS / "internal.png", dpi=120)
        md += ["", "![accuracy against FLOPs](internal.png)"]
    except ImportError:
        pass
    write("internal", payload, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
