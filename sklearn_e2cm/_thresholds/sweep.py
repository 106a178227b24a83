"""One entry point for both threshold searches over many FLOP targets.

:func:`sweep` runs the paper's bisection (one search per target) or the
coordinate-ascent path (one path, each target served by its best point
within budget); :func:`sweep_with_extremes` adds the two extreme threshold
vectors every trade-off curve includes.
"""

import numpy as np

from .._hashing import seed_of
from .bisection import bisection_search
from .coordinate import coordinate_path

__all__ = ["SEARCH_METHODS", "sweep", "sweep_with_extremes"]

#: Threshold search methods accepted by :func:`sweep`.
SEARCH_METHODS = ("bisect", "coordinate")


def _best_within(costs, scores, targets):
    """Index of the best-scoring point whose cost does not exceed each target.

    Ties go to the cheaper point; a target below every cost gets the
    cheapest point.
    """
    costs = np.asarray(costs, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((-scores, costs))
    best = order.copy()
    run = order[0]
    for k, i in enumerate(order):  # loop over path points, not samples
        if scores[i] > scores[run]:
            run = i
        best[k] = run
    pos = np.searchsorted(costs[order], np.asarray(targets) + 1e-12, side="right") - 1
    return best[np.maximum(pos, 0)]


def sweep(table, targets, method="bisect", random_state=None, tol=5e-4, progress=None,
          **method_params):
    """Search thresholds for every target.

    Parameters
    ----------
    table : ExitTable
    targets : array-like of shape (P,)
        Normalised FLOP targets.
    method : {"bisect", "coordinate"}, default="bisect"
        ``"bisect"``: the paper's search, one random start and alternating
        bisection per target (:func:`bisection_search`). ``"coordinate"``:
        one path of exact coordinate ascent on ``score - λ·cost``
        (:func:`coordinate_path`); each target gets the best path point
        whose cost does not exceed it (the cheapest point below the
        cheapest one). Both read only the cached table.
    random_state : int, Generator, RandomState or None
        Seed of the random starts of ``"bisect"``; each target's start is a
        hash of the seed and the target (:func:`random_starts`), so the point
        swept for a target does not depend on the other targets.
    tol : float
        Cost tolerance of ``"bisect"``.
    progress : callable, default=None
        Wraps the main loop (e.g. tqdm).
    **method_params
        Passed to :func:`coordinate_path` (``n_lambdas``, ``lambdas``,
        ``max_rounds``, ``init``, ``min_gap``, ``min_gain``) or
        :func:`bisection_search` (``max_rounds``).

    Returns
    -------
    thresholds : ndarray of shape (P, M - 1)
    costs, scores : ndarray of shape (P,)
        Exact expected cost and score of each threshold vector on the table.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_e2cm._thresholds import ExitTable
    >>> rng = np.random.default_rng(0)
    >>> conf = rng.random((500, 3))
    >>> correct = rng.random((500, 3)) < 0.4 + 0.5 * conf
    >>> table = ExitTable(conf, correct, [1.0, 1.0, 1.0], [0.05, 0.05, 0.0], last_head=False)
    >>> T, costs, scores = sweep(table, [0.5, 0.8], method="bisect", random_state=0)
    >>> np.round(costs, 3)
    array([0.5, 0.8])
    >>> T, costs, scores = sweep(table, [0.5, 0.8], method="coordinate")
    >>> bool(np.all(costs <= [0.5, 0.8]))
    True
    """
    if method not in SEARCH_METHODS:
        raise ValueError(
            f"Unknown threshold search method {method!r}; accepted: "
            + ", ".join(repr(m) for m in SEARCH_METHODS) + "."
        )
    targets = np.asarray(targets, dtype=np.float64).reshape(-1)
    P = targets.shape[0]
    M1 = table.n_stages - 1
    if method == "coordinate":
        allowed = {"n_lambdas", "lambdas", "max_rounds", "init", "min_gap", "min_gain"}
        bad = set(method_params) - allowed
        if bad:
            raise TypeError(f"Unexpected parameters for method='coordinate': {sorted(bad)}.")
        T, costs, scores, _ = coordinate_path(table, progress=progress, **method_params)
        sel = _best_within(costs, scores, targets)
        return T[sel], costs[sel], scores[sel]
    bad = set(method_params) - {"max_rounds"}
    if bad:
        raise TypeError(f"Unexpected parameters for method='bisect': {sorted(bad)}.")
    seed = seed_of(random_state)
    T = np.empty((P, M1))
    costs = np.empty(P)
    scores = np.empty(P)
    it = range(P) if progress is None else progress(range(P))
    for p in it:
        T[p], _, costs[p], scores[p] = bisection_search(
            table, targets[p], seed, tol=tol, return_cost_score=True, **method_params)
    return T, costs, scores


def sweep_with_extremes(table, targets, method="bisect", random_state=None, progress=None):
    """:func:`sweep` the targets, then add the two extreme threshold vectors.

    The extremes are all zeros (every sample leaves at the first exit) and
    all ones (every head off: the base model), evaluated on the table. They
    bound every trade-off curve, so its hull always spans the whole reachable
    cost range.

    Parameters
    ----------
    table, targets, method, random_state, progress
        As in :func:`sweep` (``P`` targets), which runs with its default
        tolerance and method parameters.

    Returns
    -------
    targets : ndarray of float64, shape (P + 2,)
        The targets, then NaN for the two extremes.
    thresholds : ndarray of shape (P + 2, M - 1)
        The swept vectors, then all zeros, then all ones.
    costs, scores : ndarray of shape (P + 2,)
        Exact expected cost and score of each row on the table.

    Examples
    --------
    Four samples, three stages of equal cost and free exit heads:

    >>> import numpy as np
    >>> from sklearn_e2cm._thresholds import ExitTable
    >>> conf = np.array([[0.9, 0.2, 0.0], [0.3, 0.8, 0.0], [0.1, 0.4, 0.0], [0.6, 0.7, 0.0]])
    >>> correct = np.array([[1, 1, 1], [0, 1, 1], [0, 0, 1], [1, 1, 1]], dtype=bool)
    >>> table = ExitTable(conf, correct, [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], last_head=False)
    >>> tg, T, costs, scores = sweep_with_extremes(table, [0.5, 0.75], random_state=0)
    >>> tg
    array([0.5 , 0.75,  nan,  nan])
    >>> T[-2:]
    array([[0., 0.],
           [1., 1.]])
    >>> np.round(costs, 3), scores
    (array([0.5  , 0.75 , 0.333, 1.   ]), array([0.75, 1.  , 0.5 , 1.  ]))
    """
    M1 = table.n_stages - 1
    T, costs, scores = sweep(table, targets, method=method, random_state=random_state,
                             progress=progress)
    extremes = np.vstack([np.zeros(M1), np.ones(M1)])
    ext_costs, ext_scores = table.evaluate_many(extremes)
    return (
        np.append(np.asarray(targets, dtype=np.float64), [np.nan, np.nan]),
        np.vstack([T, extremes]),
        np.append(costs, ext_costs),
        np.append(scores, ext_scores),
    )
