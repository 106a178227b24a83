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

A shorter run: ``--n-fit N`` fits the early exits on the first N training
images only (the network stays the cached 60k one), ``--only`` keeps the
configurations named, ``--targets`` sets the FLOP targets and ``--name`` the
results' file name, e.g. ``python benchmarks/bench_internal.py --n-fit 10000
--only "SDN" "SDN + E2CM (consult)" --targets 0.15 0.3 --name internal_10k``.
"""

import argparse
import shlex
import sys

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    accuracy_plot, accuracy_table, load_fashion, machine, serve_configs, trained_resnet, write,
)

TARGETS = [0.15, 0.2, 0.25, 0.3, 0.5]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=1, help="IC training epochs")
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--pooling", default="avg4",
                   help="feature reduction before the ICs and class means")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-fit", type=int, default=None,
                   help="fit the early exits on the first N training images only")
    p.add_argument("--only", nargs="+", default=None,
                   help="run only the configurations of these names (as in the table)")
    p.add_argument("--targets", type=float, nargs="+", default=TARGETS,
                   help="FLOP targets served (default: %(default)s)")
    p.add_argument("--name", default="internal", help="results file name (no extension)")
    args = p.parse_args()
    targets = args.targets

    import torch

    from sklearn_e2cm import EarlyExitClassMeans, InternalClassifierEarlyExit
    from sklearn_e2cm.stages import split_into_stages

    torch.set_num_threads(args.threads)
    Xtr, ytr, Xte, yte = load_fashion(args.n_train, None)
    net, _ = trained_resnet(Xtr, ytr if args.n_train is None else ytr, epochs=3)
    if args.n_fit:
        Xtr, ytr = Xtr[:args.n_fit], ytr[:args.n_fit]
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
        "SDN + E2CM (consult)": lambda: InternalClassifierEarlyExit(
            stages, method="sdn", epochs=args.epochs, pooling=args.pooling,
            combine="consult", **common),
        "SDN + E2CM (class means in, consult)": lambda: InternalClassifierEarlyExit(
            stages, method="sdn", epochs=args.epochs, pooling=args.pooling, class_means=True,
            combine="consult", **common),
        "SDN + E2CM (or)": lambda: InternalClassifierEarlyExit(
            stages, method="sdn", epochs=args.epochs, pooling=args.pooling, class_means=True,
            combine="or", **common),
        "SDN + whitened E2CM (and)": lambda: InternalClassifierEarlyExit(
            stages, method="sdn", epochs=args.epochs, pooling=args.pooling, class_means=True,
            combine="and", metric="mahalanobis", **common),
        "SDN + whitened E2CM (consult)": lambda: InternalClassifierEarlyExit(
            stages, method="sdn", epochs=args.epochs, pooling=args.pooling, class_means=True,
            combine="consult", metric="mahalanobis", **common),
        "SDN + whitened E2CM (or)": lambda: InternalClassifierEarlyExit(
            stages, method="sdn", epochs=args.epochs, pooling=args.pooling, class_means=True,
            combine="or", metric="mahalanobis", **common),
        "BranchyNet": lambda: InternalClassifierEarlyExit(
            stages, method="branchynet", epochs=args.epochs, pooling=args.pooling, **common),
        "BWDS": lambda: InternalClassifierEarlyExit(
            stages, method="bwds", epochs=args.epochs, pooling=args.pooling, **common),
    }
    if args.only:
        unknown = sorted(set(args.only) - set(configs))
        if unknown:
            p.error(f"unknown configuration(s) {unknown}; known: {list(configs)}")
        configs = {k: v for k, v in configs.items() if k in args.only}
    rows, fits = serve_configs(configs, Xtr, ytr, Xte, yte, targets,
                               log=lambda m: print(m, flush=True))
    payload = {"command": shlex.join(["python"] + sys.argv), "machine": machine(),
               "network": "resnet_small(depth=20, width=16), 3 epochs", "epochs": args.epochs,
               "pooling": args.pooling, "n_train": len(ytr), "fit_seconds": fits,
               "rows": rows}
    md = ["# Internal classifiers and E²CM: ResNet-20 (width 16) on Fashion-MNIST, 2-core CPU",
          "", f"Command: `{payload['command']}`  ",
          f"Thresholds tuned on the {len(ytr)} training images; test accuracy (test FLOPs) "
          f"on the {len(yte)} test images. ICs: pooling {args.pooling!r} + one linear layer, "
          f"{args.epochs} epoch(s) of Adam on the frozen network.", "",
          ] + accuracy_table(configs, rows, fits, targets) + accuracy_plot(configs, rows, args.name)
    write(args.name, payload, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
