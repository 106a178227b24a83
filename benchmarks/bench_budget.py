"""The paper's Tables I and II: early exits under a training budget, and without one.

The network is the benchmarks' cached ResNet-20 (width 16, 3 epochs) on
Fashion-MNIST; it stays frozen. Every method is fitted once on the training
images (thresholds tuned on them, as the paper does) and served at
φ = 0.15 / 0.20 / 0.25 / 0.30 with ``set_operating_point``; the table gives
the test accuracy (test FLOPs) and the training wall time of each.

* ``--budget six`` (Table I): SDN and BranchyNet internal classifiers trained
  for 6 epochs, E²CM + SDN with each combination rule (the paper's
  ``consult``, ``and``, ``or``), BWDS with one epoch (its classifiers, then its
  decision functions, all trained together in that epoch: cheaper than the
  paper's one separate epoch per decision function), and E²CM alone (the
  paper's Euclidean exits and whitened exits), which needs no training.
* ``--budget unlimited`` (Table II): the same rows, every classifier trained
  to convergence (``early_stopping=True``: 10 % of the rows held out, stop
  after 3 epochs without improvement, at most ``--max-epochs``).

``--quick``: a tiny CNN trained on 8x8 digits, the same configurations with
1 epoch (or early stopping up to 4 epochs), in seconds; the test suite runs
it. Results: ``benchmarks/results/budget_{six,unlimited}.{json,md,png}``
(``budget_*_quick`` with ``--quick``). The full runs take about an hour each
on 2 CPU cores (each epoch of IC training is a forward pass of the frozen
ResNet-20 over the 60k images, ~50 s); on a GPU, minutes.
"""

import argparse
import shlex
import sys

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    accuracy_plot, accuracy_table, load_fashion, machine, serve_configs, trained_resnet, write,
)

TARGETS = [0.15, 0.2, 0.25, 0.3]


def quick_data():
    """8x8 digits as images and a small CNN trained on them (seconds)."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from sklearn_e2cm.models import train_classifier

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU()),
        torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU()),
        torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU()),
        torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU()),
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 64, 10)),
    )
    train_classifier(net, Xtr, ytr, epochs=3, batch_size=64, random_state=0)
    return net, Xtr, ytr, Xte, yte


def configurations(stages, budget, epochs, max_epochs, pooling, common):
    """Name -> factory of every row of the table."""
    from sklearn_e2cm import EarlyExitClassMeans, InternalClassifierEarlyExit

    if budget == "six":
        train = dict(epochs=epochs)
        bwds = dict(epochs=1)
    else:
        train = bwds = dict(epochs=max_epochs, early_stopping=True, n_iter_no_change=3)

    def ic(method, **kw):
        return lambda: InternalClassifierEarlyExit(stages, method=method, pooling=pooling,
                                                   **{**train, **kw}, **common)

    out = {
        "E2CM (paper's Euclidean exits)": lambda: EarlyExitClassMeans(stages, **common),
        f"E2CM (whitened, {pooling})": lambda: EarlyExitClassMeans(
            stages, metric="mahalanobis", pooling=pooling, **common),
        "SDN": ic("sdn"),
        "BranchyNet": ic("branchynet"),
        "BWDS": lambda: InternalClassifierEarlyExit(stages, method="bwds", pooling=pooling,
                                                    **bwds, **common),
    }
    for rule in ("consult", "and", "or"):
        out[f"E2CM + SDN ({rule})"] = ic("sdn", combine=rule)
        out[f"whitened E2CM + SDN ({rule})"] = ic("sdn", combine=rule, metric="mahalanobis")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", choices=("six", "unlimited"), default="six",
                   help="six epochs (Table I) or training to convergence (Table II)")
    p.add_argument("--quick", action="store_true", help="tiny generated setting (seconds)")
    p.add_argument("--epochs", type=int, default=6, help="IC epochs of the six-epoch budget")
    p.add_argument("--max-epochs", type=int, default=50,
                   help="most epochs of the unlimited budget (early stopping ends it sooner)")
    p.add_argument("--n-fit", type=int, default=None,
                   help="fit the early exits on the first N training images only")
    p.add_argument("--pooling", default="avg4")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--name", default=None, help="results file name (no extension)")
    args = p.parse_args(argv)

    import torch

    from sklearn_e2cm.stages import split_into_stages

    torch.set_num_threads(1 if args.quick else args.threads)
    if args.quick:
        net, Xtr, ytr, Xte, yte = quick_data()
        epochs, max_epochs, pooling = 1, 4, ("avg", 2)
        network = "a 5-block CNN trained 3 epochs on 8x8 digits"
    else:
        Xtr, ytr, Xte, yte = load_fashion()
        net, _ = trained_resnet(Xtr, ytr, epochs=3)
        epochs, max_epochs, pooling = args.epochs, args.max_epochs, args.pooling
        network = "resnet_small(depth=20, width=16), 3 epochs on Fashion-MNIST"
        if args.n_fit:
            Xtr, ytr = Xtr[:args.n_fit], ytr[:args.n_fit]
    example = torch.zeros((1,) + tuple(Xtr.shape[1:]))
    stages = split_into_stages(net, example_input=example)
    common = dict(batch_size=256, random_state=0)
    configs = configurations(stages, args.budget, epochs, max_epochs, pooling, common)
    rows, fits = serve_configs(configs, Xtr, ytr, Xte, yte, TARGETS,
                               log=lambda m: print(m, flush=True))
    name = args.name or f"budget_{args.budget}" + ("_quick" if args.quick else "")
    payload = {"command": shlex.join(["python"] + sys.argv), "machine": machine(),
               "network": network, "budget": args.budget, "epochs": epochs,
               "max_epochs": max_epochs, "pooling": pooling, "n_train": len(ytr),
               "fit_seconds": fits, "rows": rows}
    title = ("Table I: six-epoch training budget" if args.budget == "six"
             else "Table II: classifiers trained to convergence (early stopping)")
    md = [f"# {title}", "", f"Command: `{payload['command']}`  ",
          f"Network: {network}, frozen. Thresholds tuned on the {len(ytr)} training rows; "
          f"test accuracy (test FLOPs) on the {len(yte)} test rows; fit = training wall "
          "time of the exits (s).", ""]
    md += accuracy_table(configs, rows, fits, TARGETS) + accuracy_plot(configs, rows, name)
    epochs_run = {r["method"]: r["epochs"] for r in rows if r["epochs"]}
    if epochs_run:
        md += ["", "Epochs run: " + "; ".join(
            f"{m}: " + ", ".join(f"{k} {v}" for k, v in e.items()) for m, e in epochs_run.items())
            + "."]
    write(name, payload, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
