"""``predict``: route new data through fitted exits; a CSV row per sample.

Columns: ``y_pred`` (the predicted label), ``exit_stage`` (0-based stage the
sample left after) and ``flops`` (the cost it paid, the full network costing
1), from :meth:`EarlyExitClassMeans.route`.
"""

from ._load import (
    CLIError,
    add_data_arguments,
    add_exits_arguments,
    load_data,
    load_fitted,
    user_errors,
    write_text,
)


def add_parser(sub):
    """The ``predict`` subcommand's parser."""
    p = sub.add_parser(
        "predict", help="predictions, exit stage and cost of every row (CSV)",
        description="Route the rows of --X through the network with the fitted exits and "
                    "write one CSV line per row: y_pred (predicted label), exit_stage (0-based "
                    "stage it left after) and flops (its cost, the full network costing 1).")
    add_exits_arguments(p)
    add_data_arguments(p, need_y=False)
    p.add_argument("--flops-target", type=float, default=None, metavar="PHI",
                   help="serve another FLOP target in (0, 1] from the file's tuning arrays "
                        "(default: the one of 'fit')")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="write the CSV to FILE (default: stdout)")
    return p


def run(args):
    """Run ``predict`` with parsed arguments."""
    import pandas as pd

    if args.flops_target is not None and not 0 < args.flops_target <= 1:
        raise CLIError(f"--flops-target {args.flops_target} is not in (0, 1].")
    X, _ = load_data(args, need_y=False)  # first: quick to check
    est = load_fitted(args)
    with user_errors(f"cannot route {args.X} through the exits"):
        if args.flops_target is not None:
            est.set_operating_point(flops_target=args.flops_target)
        r = est.route(X)
    df = pd.DataFrame({"y_pred": r.y_pred, "exit_stage": r.exit_stage, "flops": r.flops})
    write_text(df.to_csv(index=False, float_format="%.6g", lineterminator="\n"), args.out)
    return 0
