"""``fit``: fit E²CM exits on a trained network and labelled data, write them to a file.

The exits are written with :func:`sklearn_e2cm.save_exits` (JSON and arrays,
nothing executable); the network is not stored: ``curve`` and ``predict`` take
it again with ``--network`` and check it against the file.
"""

import time

from ._load import (
    CLIError,
    add_data_arguments,
    add_network_argument,
    check_steps_fitted,
    load_data,
    load_network,
    network_label,
    user_errors,
)


def _pooling(text):
    """``--pooling``: an int, a name such as ``avg4``, or ``max:8,2,2`` / ``avg:4``."""
    if text is None or text.lower() == "none":
        return None
    if text.isdigit():
        return int(text)
    if ":" in text:
        kind, _, size = text.partition(":")
        try:
            sizes = tuple(int(s) for s in size.split(","))
        except ValueError:
            raise CLIError(f"--pooling {text!r}: the size after ':' must be integers, e.g. "
                           "max:8,2,2 or avg:4.") from None
        return (kind, sizes[0] if len(sizes) == 1 else sizes)
    return text


def _calibration(text):
    """``--calibration``: a fraction in (0, 1) or a count of rows."""
    value = float(text)
    return int(value) if value >= 1 and value == int(value) else value


def add_parser(sub):
    """The ``fit`` subcommand's parser."""
    p = sub.add_parser(
        "fit", help="fit exits on a trained network and labelled data; write them to a file",
        description="Fit Early Exit Class Means on the stages of a trained network (or fitted "
                    "scikit-learn steps) with labelled data, without changing or training the "
                    "network, and write the exits (class means, thresholds, trade-off) to "
                    "--out with sklearn_e2cm.save_exits: plain JSON and arrays, no code. The "
                    "network is not stored; give it again to 'curve' and 'predict'.")
    add_network_argument(p, required=False)
    add_data_arguments(p, need_y=True)
    p.add_argument("--out", required=True, metavar="FILE",
                   help="where the exits are written (conventionally *.npz)")
    e = p.add_argument_group("estimator (sklearn_e2cm.EarlyExitClassMeans)")
    e.add_argument("--flops-target", type=float, default=0.5, metavar="PHI",
                   help="expected cost in (0, 1], the full network costing 1; 'curve' and "
                        "'predict' can serve others (default: %(default)s)")
    e.add_argument("--metric", choices=["euclidean", "mahalanobis"], default="euclidean",
                   help="distance to the class means (default: %(default)s)")
    e.add_argument("--pooling", default=None, metavar="POOL",
                   help="reduction of torch stage outputs: an int, avg4, max:8,2,2 or avg:4 "
                        "(default: none)")
    e.add_argument("--calibration", type=_calibration, default=None, metavar="PART",
                   help="rows held out (stratified) to tune the thresholds: a fraction in "
                        "(0, 1) or a count (default: none, tune on the training rows)")
    e.add_argument("--n-targets", type=int, default=1000, metavar="N",
                   help="resolution of the swept accuracy-FLOPs curve (default: %(default)s)")
    e.add_argument("--batch-size", type=int, default=1024, metavar="N",
                   help="rows per forward pass (default: %(default)s)")
    e.add_argument("--device", default="cpu", metavar="DEVICE",
                   help="torch device, e.g. cuda (default: %(default)s)")
    e.add_argument("--random-state", type=int, default=0, metavar="SEED",
                   help="seed of the calibration split and of time sharing (default: "
                        "%(default)s)")
    e.add_argument("-v", "--verbose", action="count", default=0,
                   help="progress bars and timings (repeat for more)")
    return p


def run(args):
    """Run ``fit`` with parsed arguments."""
    from ..early_exit import EarlyExitClassMeans
    from ..persistence import save_exits

    X, y = load_data(args, need_y=True)
    stages = load_network(args.network)
    check_steps_fitted(stages, args.network)
    est = EarlyExitClassMeans(
        stages=stages, flops_target=args.flops_target, metric=args.metric,
        pooling=_pooling(args.pooling), calibration=args.calibration, n_targets=args.n_targets,
        batch_size=args.batch_size, device=args.device, random_state=args.random_state,
        verbose=args.verbose)
    t0 = time.perf_counter()
    with user_errors(f"cannot fit the exits on {args.X} with {network_label(args.network)}"):
        est.fit(X, y)
    with user_errors(f"cannot save the exits to {args.out!r}"):
        save_exits(est, args.out)
    print(f"fitted {est.n_stages_} stages on {len(y)} rows in {time.perf_counter() - t0:.1f} s; "
          f"expected FLOPs {est.expected_flops_:.3f} of the full network at flops_target "
          f"{args.flops_target}; exits written to {args.out}")
    return 0
