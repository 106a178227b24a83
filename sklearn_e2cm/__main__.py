"""Command line: ``python -m sklearn_e2cm demo``.

The demo fits E²CM on a scikit-learn chain (scaling → PCA → Nyström kernel
map → logistic regression) on the digits data bundled with scikit-learn and
prints the accuracy–FLOPs table of the early-exit cascade against the full
chain, measured on a held-out test split.
"""

import argparse
import sys
import time

import numpy as np


def demo(targets=(0.2, 0.3, 0.4, 0.5, 0.7, 1.0), random_state=0, out=sys.stdout):
    """Run the digits demo; return the table as a pandas DataFrame."""
    import pandas as pd
    from sklearn.base import clone
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA
    from sklearn.kernel_approximation import Nystroem
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from .early_exit import EarlyExitClassMeans

    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, test_size=0.3, stratify=y, random_state=random_state
    )
    stages = [
        StandardScaler(),
        PCA(32, random_state=random_state),
        Nystroem(n_components=500, random_state=random_state),
        LogisticRegression(max_iter=1000),
    ]
    t0 = time.perf_counter()
    full = make_pipeline(*[clone(s) for s in stages]).fit(X_tr, y_tr)
    rows = [{"model": "full chain", "flops_target": 1.0, "test_flops": 1.0,
             "test_accuracy": full.score(X_te, y_te), "exits_per_stage": "-"}]
    clf = EarlyExitClassMeans(stages=stages, random_state=random_state).fit(X_tr, y_tr)
    for target in targets:
        clf.set_operating_point(flops_target=target)  # same as a refit, without the pass
        r = clf.route(X_te)
        rows.append({
            "model": "E2CM", "flops_target": target, "test_flops": r.flops.mean(),
            "test_accuracy": float(np.mean(r.y_pred == y_te)),
            "exits_per_stage": "/".join(map(str, r.exit_counts(clf.n_stages_))),
        })
    table = pd.DataFrame(rows)
    hull = clf.tradeoff_[clf.tradeoff_["on_hull"]]
    top = float(hull["flops"].to_numpy()[int(np.argmax(hull["accuracy"].to_numpy()))])
    print("E2CM on load_digits: StandardScaler -> PCA(32) -> Nystroem(500) -> "
          "LogisticRegression", file=out)
    print(f"train {len(y_tr)} / test {len(y_te)} samples; FLOPs normalised to the full chain "
          f"({clf.stage_flops_.sum():.0f} FLOPs per sample)", file=out)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"), file=out)
    if any(t > top + 1e-9 for t in targets):
        print(f"(accuracy on the training data stops rising at {top:.3f} FLOPs: larger targets "
              "mix in the full chain, so that the budget asked for is what is spent)", file=out)
    print(f"({time.perf_counter() - t0:.1f} s)", file=out)
    return table


def main(argv=None):
    """Entry point of ``sklearn-e2cm`` and ``python -m sklearn_e2cm``.

    Parameters
    ----------
    argv : list of str, default=None
        Arguments (``sys.argv[1:]`` when None).

    Returns
    -------
    status : int
        0 on success.
    """
    from . import __version__

    prog = "sklearn-e2cm" if sys.argv and sys.argv[0].endswith("sklearn-e2cm") \
        else "python -m sklearn_e2cm"
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Early Exit Class Means (E2CM): early exits for trained models.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    d = sub.add_parser(
        "demo", help="accuracy-FLOPs table on the digits data bundled with scikit-learn",
        description="Fit E2CM on a scikit-learn chain (scaling, PCA, Nystroem kernel map, "
                    "logistic regression) on the digits data and print the accuracy-FLOPs "
                    "table of the early-exit cascade against the full chain on a test split.")
    d.add_argument("--targets", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.5, 0.7, 1.0],
                   metavar="PHI", help="FLOP targets in (0, 1], the full chain costing 1 "
                                       "(default: %(default)s)")
    d.add_argument("--random-state", type=int, default=0, metavar="SEED",
                   help="seed of the split, the chain and the threshold search "
                        "(default: %(default)s)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo(tuple(args.targets), args.random_state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
