"""``fit``: fit early exits on a trained network and labelled data, write them to a file.

``--estimator class-means`` (the default) fits E²CM
(:class:`~sklearn_e2cm.EarlyExitClassMeans`); ``--estimator internal`` trains
internal classifiers (:class:`~sklearn_e2cm.InternalClassifierEarlyExit`:
SDN, BranchyNet or BWDS, optionally consulting E²CM). The exits are written
with :func:`sklearn_e2cm.save_exits` (JSON and arrays, nothing executable);
the network is not stored: ``curve`` and ``predict`` take it again with
``--network`` and check it against the file.
"""

import argparse
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


def _exit_at(text):
    """``--exit-at``: comma-separated stage indices, or fractions of the FLOPs."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
        return [int(v) if v == int(v) and v >= 1 or v == 0 else v for v in values]
    except (ValueError, OverflowError):  # not numbers, nan, inf
        raise argparse.ArgumentTypeError(
            f"{text!r}: give comma-separated stage indices (0,2,4) or fractions of the FLOPs "
            "(0.2,0.5)") from None


def _stage_costs(text):
    """``--stage-costs``: per-sample FLOPs of every stage, comma-separated."""
    try:
        costs = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give the per-sample FLOPs of every stage, comma-separated "
            "(e.g. 128,2048,320)") from None
    if not costs:
        raise argparse.ArgumentTypeError(f"{text!r}: no costs given")
    return costs


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
    p.add_argument("--estimator", choices=["class-means", "internal"], default="class-means",
                   help="class-means: E2CM exits (no training, one pass); internal: trained "
                        "internal classifiers (SDN, BranchyNet, BWDS; options below) "
                        "(default: %(default)s)")
    e = p.add_argument_group("exits (both estimators)")
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
    e.add_argument("--sweep-resolution", "--n-targets", dest="sweep_resolution", type=int,
                   default=1000, metavar="N",
                   help="number of FLOP targets at which the accuracy-FLOPs curve is swept "
                        "(--n-targets is its deprecated name) (default: %(default)s)")
    e.add_argument("--stage-costs", type=_stage_costs, default=None, metavar="LIST",
                   help="per-sample FLOPs of every stage, comma-separated, for stages whose "
                        "cost the package cannot count (your own scikit-learn steps) "
                        "(default: counted)")
    e.add_argument("--batch-size", type=int, default=1024, metavar="N",
                   help="rows per forward pass (default: %(default)s)")
    e.add_argument("--device", default="cpu", metavar="DEVICE",
                   help="torch device, e.g. cuda (default: %(default)s)")
    e.add_argument("--random-state", type=int, default=0, metavar="SEED",
                   help="seed of the calibration split and of time sharing (default: "
                        "%(default)s)")
    e.add_argument("-v", "--verbose", action="count", default=0,
                   help="progress bars and timings (repeat for more)")
    from ..internal import InternalClassifierEarlyExit

    default = InternalClassifierEarlyExit().get_params()
    # given only when typed (SUPPRESS): the estimator's own defaults apply otherwise, and
    # the options can be refused with --estimator class-means rather than ignored
    ic = p.add_argument_group("internal classifiers (--estimator internal)",
                              argument_default=argparse.SUPPRESS)
    ic.add_argument("--method", choices=["sdn", "branchynet", "bwds"],
                    help="the baseline: exit placement and criterion "
                         f"(default: {default['method']})")
    ic.add_argument("--exit-at", type=_exit_at, metavar="LIST",
                    help="where the exits go: stage indices (0,2,4) or fractions of the FLOPs "
                         "(0.2,0.5) (default: the method's own placement)")
    ic.add_argument("--epochs", type=int, metavar="N",
                    help="passes over the data to train the classifiers; the most with "
                         f"--early-stopping (default: {default['epochs']})")
    ic.add_argument("--early-stopping", action="store_true",
                    help="hold out 10%% of the rows and stop when no classifier improves")
    ic.add_argument("--learning-rate", type=float, metavar="LR",
                    help=f"Adam step size (default: {default['learning_rate']})")
    ic.add_argument("--combine", choices=["consult", "and", "or"],
                    help="also consult E2CM at every exit: 'consult' exits only when E2CM's "
                         "class equals the classifier's (the paper's rule) (default: no)")
    return p


#: The options of --estimator internal (InternalClassifierEarlyExit parameters).
_IC_OPTIONS = ("method", "exit_at", "epochs", "early_stopping", "learning_rate", "combine")


def _estimator(args, stages):
    common = dict(
        stages=stages, flops_target=args.flops_target, metric=args.metric,
        pooling=_pooling(args.pooling), calibration=args.calibration,
        sweep_resolution=args.sweep_resolution, stage_costs=args.stage_costs,
        batch_size=args.batch_size, device=args.device,
        random_state=args.random_state, verbose=args.verbose)
    given = {k: getattr(args, k) for k in _IC_OPTIONS if hasattr(args, k)}
    if args.estimator == "internal":
        from ..internal import InternalClassifierEarlyExit

        return InternalClassifierEarlyExit(**given, **common)
    if given:
        raise CLIError(f"{', '.join('--' + k.replace('_', '-') for k in given)} only apply to "
                       "--estimator internal.")
    from ..early_exit import EarlyExitClassMeans

    return EarlyExitClassMeans(**common)


def run(args):
    """Run ``fit`` with parsed arguments."""
    from ..persistence import save_exits

    X, y = load_data(args, need_y=True)
    stages = load_network(args.network, trust=args.trust)
    check_steps_fitted(stages, args.network)
    est = _estimator(args, stages)
    t0 = time.perf_counter()
    with user_errors(f"cannot fit the exits on {args.X} with {network_label(args.network)}"):
        est.fit(X, y)
    with user_errors(f"cannot save the exits to {args.out!r}"):
        save_exits(est, args.out)
    print(f"fitted {est.n_stages_} stages on {len(y)} rows in {time.perf_counter() - t0:.1f} s; "
          f"expected FLOPs {est.expected_flops_:.3f} of the full network at flops_target "
          f"{args.flops_target}; exits written to {args.out}")
    return 0
