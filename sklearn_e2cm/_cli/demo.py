"""``demo``: the accuracy-FLOPs table of E²CM on a scikit-learn chain.

The chain (scaling → PCA → Nyström kernel map → logistic regression) is
fitted once on the training split; every FLOP target is then served from the
cached tuning arrays with ``set_operating_point`` and measured on the test
split.
"""

import sys
import time

import numpy as np

from ._load import CLIError, one_line

DEFAULT_TARGETS = (0.2, 0.3, 0.4, 0.5, 0.7, 1.0)


def _load(dataset, random_state, max_train):
    if dataset == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        X, y = load_digits(return_X_y=True)
        X_tr, X_te, y_tr, y_te = train_test_split(
            X, y, test_size=0.3, stratify=y, random_state=random_state)
        return "load_digits", X_tr, X_te, y_tr, y_te
    if dataset == "fashion-mnist":
        from ..datasets import load_fashion_mnist

        try:
            X_tr, y_tr = load_fashion_mnist(subset="train", return_X_y=True, flatten=True)
            X_te, y_te = load_fashion_mnist(subset="test", return_X_y=True, flatten=True)
        except (FileNotFoundError, ValueError) as exc:
            raise CLIError(f"the Fashion-MNIST files cannot be read: {one_line(exc)}") from exc
        if max_train is not None and max_train < len(y_tr):
            rows = np.random.default_rng(random_state).permutation(len(y_tr))[:max_train]
            X_tr, y_tr = X_tr[np.sort(rows)], y_tr[np.sort(rows)]
        return "Fashion-MNIST", X_tr, X_te, y_tr, y_te
    raise CLIError(f"unknown dataset {dataset!r}; choose digits or fashion-mnist.")


def demo(targets=DEFAULT_TARGETS, random_state=0, out=sys.stdout, dataset="digits",
         max_train=10000):
    """Run the demo; return the table as a pandas DataFrame.

    Parameters
    ----------
    targets : sequence of float, default=(0.2, 0.3, 0.4, 0.5, 0.7, 1.0)
        FLOP targets served after the one fit.
    random_state : int, default=0
        Seed of the split, the chain and the threshold search.
    out : file, default=sys.stdout
        Where the table is printed.
    dataset : {"digits", "fashion-mnist"}, default="digits"
        ``load_digits`` (bundled with scikit-learn; 70/30 split) or
        Fashion-MNIST (:func:`sklearn_e2cm.datasets.load_fashion_mnist`; its
        test split, and ``max_train`` rows of its training split).
    max_train : int or None, default=10000
        Training rows drawn from Fashion-MNIST (None: all 60,000).

    Returns
    -------
    table : pandas.DataFrame
        One row for the full chain, one per target.
    """
    import pandas as pd
    from sklearn.base import clone
    from sklearn.decomposition import PCA
    from sklearn.kernel_approximation import Nystroem
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ..early_exit import EarlyExitClassMeans

    name, X_tr, X_te, y_tr, y_te = _load(dataset, random_state, max_train)
    stages = [
        StandardScaler(),
        # 784 standardised pixels give principal components of large variance: whitened,
        # the Nystroem RBF kernel's default width suits them as it suits the digits' ones
        PCA(32, whiten=dataset == "fashion-mnist", random_state=random_state),
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
    pca = "PCA(32, whiten)" if dataset == "fashion-mnist" else "PCA(32)"
    print(f"E2CM on {name}: StandardScaler -> {pca} -> Nystroem(500) -> "
          "LogisticRegression", file=out)
    print(f"train {len(y_tr)} / test {len(y_te)} samples; FLOPs normalised to the full chain "
          f"({clf.stage_flops_.sum():.0f} FLOPs per sample)", file=out)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"), file=out)
    if any(t > top + 1e-9 for t in targets):
        print(f"(accuracy on the training data stops rising at {top:.3f} FLOPs: larger targets "
              "mix in the full chain, so that the budget asked for is what is spent)", file=out)
    print(f"({time.perf_counter() - t0:.1f} s)", file=out)
    return table


def add_parser(sub):
    """The ``demo`` subcommand's parser."""
    d = sub.add_parser(
        "demo", help="accuracy-FLOPs table on digits or Fashion-MNIST (a scikit-learn chain)",
        description="Fit E2CM once on a scikit-learn chain (scaling, PCA, Nystroem kernel map, "
                    "logistic regression) and print the accuracy-FLOPs table of the early-exit "
                    "cascade against the full chain on a test split; every target is served "
                    "from the one fit (set_operating_point).")
    d.add_argument("--dataset", choices=["digits", "fashion-mnist"], default="digits",
                   help="digits: bundled with scikit-learn (70/30 split); fashion-mnist: the "
                        "IDX files found by sklearn_e2cm.datasets.load_fashion_mnist, its test "
                        "split (default: %(default)s)")
    d.add_argument("--max-train", type=int, default=10000, metavar="N",
                   help="training rows drawn from Fashion-MNIST; 0 for all 60000 "
                        "(default: %(default)s)")
    d.add_argument("--targets", type=float, nargs="+", default=list(DEFAULT_TARGETS),
                   metavar="PHI", help="FLOP targets in (0, 1], the full chain costing 1 "
                                       "(default: %(default)s)")
    d.add_argument("--random-state", type=int, default=0, metavar="SEED",
                   help="seed of the split, the chain and the threshold search "
                        "(default: %(default)s)")
    return d


def run(args):
    """Run ``demo`` with parsed arguments."""
    for t in args.targets:
        if not 0 < t <= 1:
            raise CLIError(f"--targets: {t} is not in (0, 1].")
    demo(tuple(args.targets), args.random_state, dataset=args.dataset,
         max_train=args.max_train or None)
    return 0
