"""Exact coordinate ascent on ``score - λ·cost`` along a path of ``λ``.

Each 1-D step maximises the Lagrangian exactly over every candidate
threshold of one stage (the sorted exit probabilities of the samples that
reach it), with the head switched off as one more candidate
(:func:`_coordinate_step`); :func:`coordinate_path` sweeps ``λ`` upwards,
warm-starting each ``λ`` from the previous solution, and then refines the
path along the edges of its upper concave hull.
"""

from typing import NamedTuple

import numpy as np

from .hull import upper_hull
from .table import cumulative_cost

__all__ = ["coordinate_path"]


class _AscentData(NamedTuple):
    """Arrays of the table that every coordinate step reads, built once per path."""

    #: Per early stage, the correctness bit codes of the samples
    #: (:attr:`ExitTable.correct_codes`) in the order of decreasing exit probability.
    sorted_correct: list
    #: Per early stage, each sample's weight in that order (``1 / N`` without weights).
    sorted_weights: list
    #: Per early stage, the exit probabilities in increasing order.
    ascending_conf: list
    #: Per early stage and prefix length ``k`` (0..N) of the samples in that
    #: order, the largest ``k' <= k`` that a threshold can cut at (-1: none).
    last_cut: list
    #: Smallest gain of a step, as a fraction of the (effective) samples.
    min_gain: float = 0.0

    @classmethod
    def of(cls, table, min_gain=0.0):
        """Build them for ``table``; ``min_gain`` is in (effective) samples, or "auto"."""
        w = table.weights
        n_eff = table.n_samples if w is None else 1.0 / float((w * w).sum())
        if isinstance(min_gain, str):
            if min_gain != "auto":
                raise ValueError(
                    f"min_gain must be a number of samples or 'auto'; got {min_gain!r}.")
            min_gain = max(1.0, n_eff / 6000.0)
        cols = table.sorted_columns
        cuts = np.arange(table.n_samples + 1)
        return cls([table.correct_codes[order] for order, _, _ in cols],
                   [1.0 / table.n_samples if w is None else w[order] for order, _, _ in cols],
                   [d[::-1] for _, d, _ in cols],
                   [np.maximum.accumulate(np.where(pen == 0, cuts, -1)) for _, _, pen in cols],
                   float(min_gain) / n_eff)


def _default_lambdas(table, n_lambdas):
    """0, then a geometric grid of Lagrange multipliers (score per unit cost).

    From ``0.1 / N`` (one sample's worth of score over the whole cost range)
    up to ``2 / (smallest cost step between exits)``, beyond which every
    sample is better off leaving at the first stage.
    """
    steps = np.diff(table.full_cost)
    steps = steps[steps > 0]
    hi = 2.0 / (steps.min() if steps.size else 1.0)
    n_eff = table.n_samples if table.weights is None else 1.0 / np.sum(table.weights**2)
    lo = min(0.1 / max(n_eff, 1.0), hi * 1e-3)
    return np.concatenate([[0.0], np.geomspace(lo, hi, max(int(n_lambdas) - 1, 1))])


def _coordinate_step(table, codes, T, j, lam, data, sorted_codes=None):
    """Exact maximisation of ``score - lam * cost`` over ``T[j]``.

    With the other thresholds fixed, the objective as a function of ``T[j]``
    is a step function that changes only at the exit probabilities of the
    samples that reach stage ``j``, so one sort (cached on the table) and one
    cumulative sum give its exact maximum over every candidate threshold,
    and over switching the head off. Among equally good thresholds the one
    in the middle of the widest gap between the tuning samples'
    probabilities is kept.

    ``codes`` are the exit codes of ``T`` and ``data`` the table's
    :class:`_AscentData`; ``sorted_codes``, when given, caches ``codes`` in
    the order of every stage's probabilities (a dict filled as needed, to be
    emptied whenever ``codes`` change). Returns the new threshold, or
    ``None`` when no candidate improves on the current one.
    """
    M = table.n_stages
    N = table.n_samples
    dt = table.code_dtype
    full = (1 << (M - 1)) - 1
    keep = dt(full & ~(1 << j))
    order, desc, pen = table.sorted_columns[j]
    # the samples that reach stage j (no exit before it), by decreasing exit probability
    # at j, and where each leaves with head j off
    if sorted_codes is None:
        codes_j = codes[order]
    else:
        codes_j = sorted_codes.get(j)
        if codes_j is None:
            codes_j = sorted_codes[j] = codes[order]
    pos = np.flatnonzero((codes_j & dt((1 << j) - 1)) == 0)
    R = pos.shape[0]
    w = data.sorted_weights[j]
    W = R / N if table.weights is None else float(w[pos].sum())
    if W <= 0:
        return None  # nothing reaches stage j: every threshold is as good
    e = table.exits_of_codes(codes_j[pos] & keep)
    active = T < 1.0
    active[j] = False
    c_off = cumulative_cost(table.stage_flops, table.exit_flops, active, table.last_head)
    # gain of leaving at j rather than at the later exit, for the samples that reach j
    # (positions pos in the order of decreasing exit probability at j); the objective of
    # cutting after the first k samples of that order is S[k] = Sc[#(pos < k)]
    cc = data.sorted_correct[j][pos]
    gain = (((cc >> j) & 1) - ((cc >> e) & 1)) - (lam * (c_off[j] - c_off))[e]
    gain *= w if table.weights is None else w[pos]
    Sc = np.empty(R + 1)
    Sc[0] = 0.0
    np.cumsum(gain, out=Sc[1:])
    # the largest cut with Sc[r] lies in (pos[r - 1], pos[r]] (pos[-1] = -1, pos[R] = N)
    kr = data.last_cut[j][np.append(pos, N)]
    ok = kr > np.concatenate([[-1], pos])
    vals = np.where(ok, Sc, -np.inf)
    r_best = R - int(np.argmax(vals[::-1]))  # the cheapest of the best cuts
    kb = int(kr[r_best]) if ok[r_best] else N
    overhead = lam * table.exit_flops[j] / table.stage_flops.sum() * W
    best_on = vals[r_best] - overhead
    # objective of the current threshold (relative to head j off)
    if T[j] >= 1.0:
        current = 0.0
    else:
        k_old = N - int(np.searchsorted(data.ascending_conf[j], T[j], side="right"))
        current = Sc[int(np.searchsorted(pos, k_old))] - overhead
    eps = 1e-12 + data.min_gain
    if max(best_on, 0.0) <= current + eps:
        return None
    if best_on <= 0.0:
        return 1.0  # switching the head off is best
    # widest margin: the run of equal objective ending at kb
    idx = np.flatnonzero(Sc[:r_best] != Sc[r_best])
    ka = int(pos[idx[-1]]) + 1 if idx.size else 1
    if kb == N:
        return 0.0
    lo, hi = desc[kb], desc[ka - 1]
    t = lo + (hi - lo) / 2.0
    if not lo <= t < hi:
        t = lo
    return float(t)


def _ascend(table, T, codes, lam, data, max_rounds, sorted_codes=None):
    """Coordinate ascent at one ``lam`` from ``(T, codes)``, in place; returns codes.

    ``sorted_codes`` (a dict, see :func:`_coordinate_step`) may carry the
    sorted views of ``codes`` over from the previous ascent; it is emptied
    whenever a threshold moves.
    """
    M1 = table.n_stages - 1
    dt = table.code_dtype
    last_change = None
    j = 0
    if sorted_codes is None:
        sorted_codes = {}
    for _ in range(max_rounds * M1):
        if last_change == j:
            break  # a full pass without change
        t = _coordinate_step(table, codes, T, j, lam, data, sorted_codes)
        if t is not None and t != T[j]:
            T[j] = t
            keep = dt(((1 << M1) - 1) & ~(1 << j))
            codes = (codes & keep) | ((table.conf_cols[j] > t).astype(dt) << dt(j))
            sorted_codes.clear()
            last_change = j
        elif last_change is None and j == M1 - 1:
            break  # the first pass changed nothing
        j = (j + 1) % M1
    return codes


class _Path:
    """Points of a ``λ`` path: thresholds, exact cost and score, and ``λ``."""

    def __init__(self, table):
        self.table = table
        self.thresholds, self.costs, self.scores, self.lambdas = [], [], [], []

    def record(self, T, codes, lam):
        table = self.table
        c, s = table.cost_and_score(table.exits_of_codes(codes), table.costs(T))
        self.thresholds.append(T.copy())
        self.costs.append(c)
        self.scores.append(s)
        self.lambdas.append(lam)

    def arrays(self):
        return (np.array(self.thresholds), np.array(self.costs), np.array(self.scores),
                np.array(self.lambdas))


def _refine_along_hull(table, path, data, max_rounds, min_gap, budget):
    """Spend ``budget`` more ascents on the edges of the path's upper hull.

    For each hull edge more than ``min_gap`` apart in cost (longest first),
    ``λ`` is set to the edge's slope and the ascent restarts from its dearer
    vertex; the new points are recorded in ``path``, and new edges are tried
    until the budget is spent or no edge is left.
    """
    tried = set()
    while budget > 0:
        c = np.asarray(path.costs)
        s = np.asarray(path.scores)
        h = upper_hull(c, s)
        edges = [
            (int(a), int(b)) for a, b in zip(h[:-1], h[1:])
            if c[b] - c[a] > min_gap and (int(a), int(b)) not in tried
        ]
        if not edges:
            break
        # the longest edges first
        edges.sort(key=lambda e: c[e[0]] - c[e[1]])
        for a, b in edges[:budget]:
            tried.add((a, b))
            lam = (s[b] - s[a]) / (c[b] - c[a])
            T = path.thresholds[b].copy()
            codes = _ascend(table, T, table.exit_codes(thresholds=T), lam, data, max_rounds)
            path.record(T, codes, lam)
            budget -= 1


def coordinate_path(table, lambdas=None, *, n_lambdas=100, max_rounds=30, init=None,
                    min_gap=1e-3, min_gain="auto", progress=None):
    """Exact coordinate ascent on ``score - λ·cost`` along a path of ``λ``.

    For each ``λ`` the thresholds are optimised one stage at a time, each
    step exactly over every candidate threshold of its stage and over
    switching its head off (``T_j = 1``, which also saves its overhead).
    Passes over the stages repeat until none changes; the objective never
    decreases, so this terminates. A step is taken only if it gains more
    than ``min_gain`` samples' worth of objective (``min_gain / N``):
    chasing a few samples fits the tuning data's noise (measured in
    ``benchmarks/bench_search.py`` and ``benchmarks/bench_sweep.py``: one
    sample closes the held-out gap to the bisection on 1.3k-sample tuning
    sets; on 60k training images a one-sample step loses up to 0.0013 of
    held-out accuracy near the base model's cost, ten samples lose none).

    The path starts from ``init`` at ``λ = 0`` and sweeps ``λ`` upwards,
    each ``λ`` warm-started from the previous solution (costs fall as ``λ``
    grows). With ``lambdas=None`` a third of the ``n_lambdas`` ascents go to
    a geometric grid and the rest walk the hull: for two consecutive hull
    vertices more than ``min_gap`` apart in cost, ``λ`` is set to the slope
    of the edge between them and the ascent restarts from the dearer vertex
    (the classic way to trace a concave trade-off with a Lagrangian solver).

    Parameters
    ----------
    table : ExitTable
    lambdas : array-like, default=None
        Lagrange multipliers (score per unit of normalised cost), swept in
        increasing order. ``None``: chosen as described above.
    n_lambdas : int, default=100
        Number of ascents when ``lambdas`` is None.
    max_rounds : int, default=30
        Passes over the stages per ``λ``.
    init : array-like of shape (M - 1,), default=None
        Thresholds the path starts from (default: all ones, every head off:
        the base model).
    min_gap : float, default=1e-3
        Hull edges shorter than this (in cost) are not refined.
    min_gain : float or "auto", default="auto"
        Smallest gain of a step, in samples (effective samples when
        weighted); 0 takes every strict improvement. ``"auto"``: one sample
        per 6000, and at least one.
    progress : callable, default=None
        Wraps the iterable over the grid of ``λ`` (e.g. a tqdm progress bar).

    Returns
    -------
    thresholds : ndarray of shape (L, M - 1)
    costs, scores : ndarray of shape (L,)
        Exact expected cost and score of every path point on the table.
    lambdas : ndarray of shape (L,)

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_e2cm._thresholds import ExitTable
    >>> rng = np.random.default_rng(0)
    >>> conf = rng.random((500, 3))
    >>> correct = rng.random((500, 3)) < 0.4 + 0.5 * conf
    >>> table = ExitTable(conf, correct, [1.0, 1.0, 1.0], [0.05, 0.05, 0.0], last_head=False)
    >>> T, costs, scores, lams = coordinate_path(table, lambdas=np.linspace(0, 5, 20))
    >>> T.shape
    (20, 2)
    >>> bool(np.all(np.diff(costs) <= 1e-12))  # a larger λ never costs more
    True
    """
    # Over 80 lines only because of the docstring: the code is about 20 lines.
    M1 = table.n_stages - 1
    refine = lambdas is None
    if refine:
        n_total = max(int(n_lambdas), 2)
        lams = _default_lambdas(table, max(n_total // 3, min(n_total, 16)))
    else:
        lams = np.sort(np.asarray(lambdas, dtype=np.float64))
    if M1 == 0:
        c, s = table.evaluate(np.zeros(0))
        L = lams.shape[0]
        return np.zeros((L, 0)), np.full(L, c), np.full(L, s), lams
    T = np.ones(M1) if init is None else np.asarray(init, dtype=np.float64).copy()
    codes = table.exit_codes(thresholds=T)
    data = _AscentData.of(table, min_gain)
    path = _Path(table)
    sorted_codes = {}  # the path's codes in every stage's order, while they do not change
    for lam in lams if progress is None else progress(lams):
        codes = _ascend(table, T, codes, lam, data, max_rounds, sorted_codes)
        path.record(T, codes, lam)
    if refine:
        _refine_along_hull(table, path, data, max_rounds, min_gap,
                           budget=n_total - len(path.thresholds))
    return path.arrays()
