"""``curve``: the accuracy-FLOPs table (and figure) of fitted exits on labelled data.

One forward pass over the data (``exit_table``) caches every stage's exit
decision; each FLOP target is then served as the estimator serves it
(``set_operating_point``: the thresholds, or the time-sharing mixture of two
threshold vectors, tuned on the fit's tuning data) and evaluated on the cached
arrays: expected FLOPs and accuracy on these rows.
"""

import warnings

import numpy as np

from .._exit_estimator import tuning_table_of
from .._thresholds import evaluate_mixtures
from ._load import (
    CLIError,
    add_data_arguments,
    add_exits_arguments,
    load_data,
    load_fitted,
    user_errors,
    write_text,
)

DEFAULT_TARGETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def add_parser(sub):
    """The ``curve`` subcommand's parser."""
    p = sub.add_parser(
        "curve", help="accuracy-FLOPs table (CSV or markdown) and figure of fitted exits",
        description="Evaluate fitted exits on labelled data: for every FLOP target, the "
                    "expected cost (the full network costing 1) and accuracy of the operating "
                    "point the exits serve for it, with the base model's row; one forward "
                    "pass. Optionally draw the trade-off (TradeoffDisplay) to a PNG.")
    add_exits_arguments(p)
    add_data_arguments(p, need_y=True)
    p.add_argument("--targets", type=float, nargs="+", default=list(DEFAULT_TARGETS),
                   metavar="PHI", help="FLOP targets in (0, 1] (default: %(default)s)")
    p.add_argument("--format", choices=["csv", "markdown"], default="csv",
                   help="table format (default: %(default)s)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="write the table to FILE (default: stdout)")
    p.add_argument("--png", default=None, metavar="FILE",
                   help="also draw the accuracy-FLOPs curve to this PNG file")
    return p


def curve_table(est, X, y, targets):
    """The accuracy-FLOPs table of ``est`` on ``(X, y)`` for every target.

    Parameters
    ----------
    est : fitted early-exit estimator with its tuning arrays
    X, y : inputs and labels
    targets : sequence of float

    Returns
    -------
    table : pandas.DataFrame
        Columns ``model``, ``flops_target``, ``flops``, ``accuracy``: the base
        model first, then one row per target.
    """
    import pandas as pd

    table = est.exit_table(X, y)
    base_cost, base_acc = table.evaluate(np.ones(table.n_stages - 1))
    rows = [{"model": "base model", "flops_target": 1.0, "flops": float(base_cost),
             "accuracy": float(base_acc)}]
    for t in targets:
        with warnings.catch_warnings():  # a target below the cheapest point: the row says it
            warnings.simplefilter("ignore", UserWarning)
            est.set_operating_point(flops_target=t)
        T = np.asarray(est.mixture_thresholds_)
        (cost,), (acc,) = evaluate_mixtures(table, T, [(np.arange(len(T)),
                                                        est.mixture_weights_)])
        rows.append({"model": "E2CM", "flops_target": float(t), "flops": float(cost),
                     "accuracy": float(acc)})
    return pd.DataFrame(rows, columns=["model", "flops_target", "flops", "accuracy"])


def _markdown(df):
    cells = [[str(c) for c in df.columns]]
    for row in df.itertuples(index=False):
        cells.append([f"{v:.4f}" if isinstance(v, float) else str(v) for v in row])
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines) + "\n"


def run(args):
    """Run ``curve`` with parsed arguments."""
    for t in args.targets:
        if not 0 < t <= 1:
            raise CLIError(f"--targets: {t} is not in (0, 1].")
    if args.png is not None:
        try:
            import matplotlib
        except ImportError:
            raise CLIError("--png needs matplotlib: pip install matplotlib.") from None
        matplotlib.use("Agg")
    X, y = load_data(args, need_y=True)  # first: quick to check
    est = load_fitted(args)
    if tuning_table_of(est) is None:
        raise CLIError(f"{args.exits} holds no tuning arrays (saved with include_tuning=False): "
                       "other FLOP targets cannot be served from it; refit with 'fit'.")
    if args.png is not None:  # first: drawn at the operating point saved in the file
        from ..plotting import TradeoffDisplay

        with user_errors(f"cannot draw the curve to {args.png!r}"):
            disp = TradeoffDisplay.from_estimator(est, X, y)  # its own pass over X
            disp.figure_.savefig(args.png, dpi=120, bbox_inches="tight")
    with user_errors(f"cannot evaluate the exits on {args.X}"):
        df = curve_table(est, X, y, args.targets)
    text = _markdown(df) if args.format == "markdown" else df.to_csv(
        index=False, float_format="%.6g", lineterminator="\n")
    write_text(text, args.out)
    return 0
