"""The operating point of a fitted early-exit estimator, chosen from its tuning table.

An operating point is a time-sharing mixture of threshold vectors: one vector
(explicit thresholds, the paper's single-target search, or the base model),
or the two hull vertices around the FLOP target. :func:`choose_operating_point`
is the one implementation every estimator and the search use.
"""

from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd

from .._backend import progress
from .._thresholds import (
    bisection_search,
    sweep_with_extremes,
    served_hull,
    time_sharing,
    warn_unreachable,
)

__all__ = ["OperatingPointSpec", "OperatingPoint", "choose_operating_point", "swept_points"]


@dataclass
class OperatingPointSpec:
    """What an estimator asks for (its parameters).

    Attributes
    ----------
    flops_target : float or None
        Expected normalised cost; ``None``: the base model.
    thresholds : array-like or None
        Explicit thresholds (override the search).
    threshold_search : {"hull", "bisect-hull", "bisect"}
        ``"hull"``: the hull of the coordinate-ascent path; ``"bisect-hull"``:
        the hull of the paper's bisection at every target of the grid;
        ``"bisect"``: the paper's search at the one target.
    sweep_resolution : int
        Size of the swept target grid of the hull searches.
    sweep_seed : int
        Seed of the bisection's random starts.
    verbose : int
        Progress bar over the sweep when positive.
    score_name : str
        What the tuning table's score is (``"accuracy"``, or ``"agreement"``
        with the base model for a clustering estimator): names the score
        column of the trade-off table.
    """

    flops_target: object = None
    thresholds: object = None
    threshold_search: str = "hull"
    sweep_resolution: int = 1000
    sweep_seed: int = 0
    verbose: int = 0
    score_name: str = "accuracy"


@dataclass
class OperatingPoint:
    """The chosen mixture and what it gives on the tuning table.

    Attributes
    ----------
    mixture_thresholds : ndarray of shape (V, n_stages - 1)
    mixture_weights : ndarray of shape (V,)
    mixture_costs : ndarray of shape (V, n_stages)
        Cost of exiting after each stage under each vector.
    thresholds : ndarray of shape (n_stages - 1,)
        The vector with the largest weight.
    expected_flops, expected_score : float
        Expected normalised cost and score of the mixture on the table.
    tradeoff : pandas.DataFrame
        Swept points: ``target``, ``flops``, ``accuracy`` (the table's score),
        ``thresholds``, ``on_hull``; with another ``score_name`` the score is
        also in a column of that name (``accuracy`` is kept for compatibility).
    """

    mixture_thresholds: np.ndarray
    mixture_weights: np.ndarray
    mixture_costs: np.ndarray
    thresholds: np.ndarray
    expected_flops: float
    expected_score: float
    tradeoff: pd.DataFrame


def _explicit(table, spec):
    M1 = table.n_stages - 1
    T = np.asarray(spec.thresholds, dtype=np.float64)
    if T.shape != (M1,):
        raise ValueError(
            f"thresholds has shape {T.shape}; expected ({M1},) for {M1 + 1} stages "
            "(one threshold per stage but the last)."
        )
    if not np.all((T >= 0) & (T <= 1)):
        raise ValueError(f"thresholds must lie in [0, 1]; got {T.tolist()}.")
    c, a = table.evaluate(T)
    return T[None, :], np.array([1.0]), None, [(np.nan, c, a, T, True)]


def _single_target(table, spec):
    target = float(spec.flops_target)
    if target < table.min_cost():
        warn_unreachable(target, table.min_cost())
    T, _ = bisection_search(table, target, spec.sweep_seed)
    c, a = table.evaluate(T)
    return T[None, :], np.array([1.0]), None, [(target, c, a, T, True)]


def swept_points(table, spec):
    """The threshold vectors a hull operating point is chosen from.

    ``spec.sweep_resolution`` FLOP targets swept on ``table`` with the search
    ``spec.threshold_search`` names (the coordinate-ascent path for
    ``"hull"``, the paper's bisection otherwise), plus the two extreme
    vectors (:func:`~sklearn_e2cm._thresholds.sweep_with_extremes`).

    Parameters
    ----------
    table : ExitTable
    spec : OperatingPointSpec

    Returns
    -------
    targets, thresholds, costs, scores : ndarray
        As :func:`~sklearn_e2cm._thresholds.sweep_with_extremes` returns them.
    """
    targets = np.linspace(0, 1, spec.sweep_resolution + 1)[1:]
    method = "coordinate" if spec.threshold_search == "hull" else "bisect"
    bar = partial(progress, verbose=spec.verbose, desc="E2CM threshold sweep",
                  total=len(targets) if method == "bisect" else None)
    return sweep_with_extremes(table, targets, method=method, random_state=spec.sweep_seed,
                               progress=bar)


def _from_hull(table, spec, swept):
    if swept is None:
        swept = swept_points(table, spec)
    tg, T, costs, scores = (np.asarray(a) for a in swept)
    hull = served_hull(costs, scores, T)
    on_hull = np.zeros(costs.shape[0], bool)
    on_hull[hull] = True
    target = float(spec.flops_target)
    if target < costs[hull[0]] - 1e-12:
        warn_unreachable(target, costs[hull[0]])
    verts, weights = time_sharing(costs[hull], target)
    chosen = hull[verts]
    return (T[chosen], weights, (costs[chosen], scores[chosen]),
            list(zip(tg, costs, scores, list(T), on_hull)))


def choose_operating_point(table, spec, swept=None):
    """Choose the operating point ``spec`` asks for on ``table``.

    Parameters
    ----------
    table : ExitTable
        The tuning table (the estimator's cost model and tuning rows).
    spec : OperatingPointSpec
    swept : tuple, default=None
        A sweep already run on ``table``, ``(targets, thresholds, costs,
        scores)`` as :func:`~sklearn_e2cm._thresholds.sweep_with_extremes`
        returns (the scores may come from any scoring); the hull searches
        then use it instead of sweeping. Ignored by explicit thresholds, the
        base model and the single-target search.

    Returns
    -------
    point : OperatingPoint
    """
    M1 = table.n_stages - 1
    if spec.thresholds is not None:
        mix_T, mix_w, known, rows = _explicit(table, spec)
    elif spec.flops_target is None or M1 == 0:
        base_cost, base_score = table.evaluate(np.ones(M1))
        target = np.nan if spec.flops_target is None else spec.flops_target
        mix_T, mix_w, known = np.ones((1, M1)), np.array([1.0]), None
        rows = [(target, base_cost, base_score, np.ones(M1), True)]
    elif spec.threshold_search == "bisect" and swept is None:
        mix_T, mix_w, known, rows = _single_target(table, spec)
    else:
        mix_T, mix_w, known, rows = _from_hull(table, spec, swept)
    costs, scores = table.evaluate_many(mix_T) if known is None else known
    columns = {
        "target": [r[0] for r in rows],
        "flops": [r[1] for r in rows],
        "accuracy": [r[2] for r in rows],
    }
    if spec.score_name != "accuracy":
        columns[spec.score_name] = columns["accuracy"]
    columns["thresholds"] = [np.asarray(r[3]) for r in rows]
    columns["on_hull"] = [bool(r[4]) for r in rows]
    tradeoff = pd.DataFrame(columns)
    return OperatingPoint(
        mixture_thresholds=mix_T,
        mixture_weights=mix_w,
        mixture_costs=table.costs(mix_T),
        thresholds=mix_T[int(np.argmax(mix_w))].copy(),
        expected_flops=float(mix_w @ costs),
        expected_score=float(mix_w @ scores),
        tradeoff=tradeoff,
    )
