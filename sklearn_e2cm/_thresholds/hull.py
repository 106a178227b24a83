"""Upper concave hull of swept operating points, and time sharing between its vertices.

Any cost between two hull vertices is met exactly by serving each sample
with one of the two threshold vectors (:func:`time_sharing`); the mixture
helpers evaluate such mixtures on an exit table, either in expectation or
as the realised routing of each sample (:func:`mixture_exits`,
:func:`evaluate_mixtures`).

This module reads exit tables only through their public members and does
not import :mod:`.table`.
"""

import numpy as np

from .._backend import warn
from .._hashing import assign_rows

__all__ = [
    "upper_hull",
    "served_hull",
    "time_sharing",
    "mixture_exits",
    "mixture_values",
    "evaluate_mixtures",
    "warn_unreachable",
]


def upper_hull(costs, scores):
    """Vertices of the upper concave hull of (cost, score) points.

    Only the rising part is kept (left to right up to the best score): a
    point right of the best-scoring vertex is dominated by it.

    Parameters
    ----------
    costs, scores : array-like of shape (P,)
        The points.

    Returns
    -------
    vertices : ndarray of int
        Indices into ``costs`` in increasing cost (and score) order.

    Examples
    --------
    >>> upper_hull([0.1, 0.5, 0.3, 1.0], [0.5, 0.9, 0.6, 0.9])
    array([0, 1])
    """
    c = np.asarray(costs, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((-s, c))
    hull = []
    for i in order:
        if hull and c[hull[-1]] == c[i]:
            continue  # same cost, lower (or equal) score
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            cross = (c[b] - c[a]) * (s[i] - s[a]) - (s[b] - s[a]) * (c[i] - c[a])
            if cross >= 0:
                hull.pop()
            else:
                break
        hull.append(i)
    hull = np.asarray(hull, dtype=np.intp)
    best = int(np.argmax(s[hull]))
    return hull[: best + 1]


def served_hull(costs, scores, thresholds):
    """The vertices every FLOP target is served from: the upper hull, then the base model.

    The upper concave hull (:func:`upper_hull`) ends at its best-scoring
    point. When that point is cheaper than the base model (a row whose
    thresholds are all 1: every head off), the base model is appended, so
    that a target above the hull's top is still met by time sharing between
    the top vertex and the full chain: on the tuning data the top vertex
    scores at least as well, but its score there is usually optimistic
    (thresholds tuned on rows the network was trained on), and a budget is
    what the user asked for.

    Parameters
    ----------
    costs, scores : array-like of shape (P,)
    thresholds : array-like of shape (P, M - 1)

    Returns
    -------
    vertices : ndarray of int
        Indices in increasing cost order.

    Examples
    --------
    >>> import numpy as np
    >>> T = np.array([[0.0], [0.5], [1.0]])
    >>> served_hull([0.2, 0.5, 1.0], [0.8, 0.9, 0.85], T)
    array([0, 1, 2])
    """
    c = np.asarray(costs, dtype=np.float64)
    hull = upper_hull(c, scores)
    T = np.asarray(thresholds, dtype=np.float64)
    base = np.flatnonzero(np.all(T >= 1.0, axis=1)) if T.ndim == 2 else np.zeros(0, int)
    if base.size and c[base[0]] > c[hull[-1]] + 1e-12:
        hull = np.append(hull, base[0])
    return hull


def time_sharing(hull_costs, target):
    """Mix of the two hull vertices around ``target``.

    Parameters
    ----------
    hull_costs : array-like of shape (H,)
        Costs of the hull vertices, increasing.
    target : float
        Expected cost to meet.

    Returns
    -------
    vertices : ndarray of int, shape (1,) or (2,)
        Indices into the hull arrays.
    weights : ndarray of shape (1,) or (2,)
        Probability of serving a sample with each vertex; the expected cost
        of the mix is exactly ``target`` when the target lies on the hull.

    Examples
    --------
    >>> v, w = time_sharing([0.2, 0.6, 1.0], 0.5)
    >>> v.tolist(), w.round(3).tolist()
    ([0, 1], [0.25, 0.75])
    """
    hc = np.asarray(hull_costs, dtype=np.float64)
    if target <= hc[0]:
        return np.array([0]), np.array([1.0])
    if target >= hc[-1]:
        return np.array([hc.shape[0] - 1]), np.array([1.0])
    b = int(np.searchsorted(hc, target, side="left"))
    if hc[b] == target:
        return np.array([b]), np.array([1.0])
    a = b - 1
    wa = (hc[b] - target) / (hc[b] - hc[a])
    return np.array([a, b]), np.array([wa, 1.0 - wa])


def mixture_exits(table, T, vertices, weights, u, cache=None):
    """Exit stage and cost of every sample of ``table`` under a time-sharing mixture.

    Each sample is sent to one threshold vector ``T[vertices[c]]`` exactly as
    the router does (:func:`~sklearn_e2cm._hashing.assign_rows` of its
    uniform ``u`` and ``weights``), so the result is the realised routing,
    not its expectation.

    Parameters
    ----------
    table : ExitTable
    T : ndarray of shape (V, M - 1)
    vertices : ndarray of int
        Rows of ``T`` in the mixture.
    weights : ndarray
        Their mixing probabilities.
    u : ndarray of shape (N,)
        One uniform per sample (e.g. :func:`row_uniforms` of the rows).
    cache : dict, default=None
        Per-vertex exits and costs, reused across calls on the same table.

    Returns
    -------
    exits : ndarray of int, shape (N,)
    cost : ndarray of float, shape (N,)
    """
    cache = {} if cache is None else cache

    def vertex(v):
        v = int(v)
        if v not in cache:
            e = table.exit_stages(T[v])
            cache[v] = (e, table.costs(T[v])[e])
        return cache[v]

    vertices = np.asarray(vertices)
    if vertices.shape[0] == 1:
        return vertex(vertices[0])
    comp = assign_rows(u, weights)
    exits = np.empty(table.n_samples, dtype=np.intp)
    cost = np.empty(table.n_samples, dtype=np.float64)
    for c, v in enumerate(vertices):
        sel = comp == c
        e, cv = vertex(v)
        exits[sel] = e[sel]
        cost[sel] = cv[sel]
    return exits, cost


def mixture_values(mixtures, values):
    """Expected value of each mixture: its weights times the values of its vertices.

    Parameters
    ----------
    mixtures : list of (vertices, weights)
        Indices into ``values`` and their mixing probabilities.
    values : ndarray of shape (V,)
        One value per vertex (e.g. its cost or score).

    Returns
    -------
    expected : ndarray of shape (len(mixtures),)

    Examples
    --------
    >>> import numpy as np
    >>> mixture_values([(np.array([0, 2]), np.array([0.5, 0.5]))], np.array([1.0, 5.0, 3.0]))
    array([2.])
    """
    return np.array([float(w @ values[v]) for v, w in mixtures])


def evaluate_mixtures(table, T, mixtures, u=None):
    """Cost and score of each time-sharing mixture over the rows of ``T``.

    Without ``u`` the values are expectations (the weights times each
    vertex's cost and score); with one uniform per sample they are the
    realised values of the routing that sends each sample to one vertex
    (:func:`mixture_exits`), which is what an estimator serving that mixture
    scores on these samples.

    Parameters
    ----------
    table : ExitTable
    T : ndarray of shape (V, M - 1)
        Threshold vectors, the vertices of the mixtures.
    mixtures : list of (vertices, weights)
        Rows of ``T`` and their mixing probabilities, as from :func:`time_sharing`.
    u : ndarray of shape (N,), default=None
        One uniform per sample.

    Returns
    -------
    costs, scores : ndarray of shape (len(mixtures),)
    """
    if u is None:
        vc, vs = table.evaluate_many(T)
        return mixture_values(mixtures, vc), mixture_values(mixtures, vs)
    return _RealisedMixtures(table, T, u).evaluate(mixtures)


class _RealisedMixtures:
    """Realised cost and score of mixtures, with the samples sorted by their uniform.

    A two-vertex mixture ``(a, b)`` with weights ``(w, 1 - w)`` sends the
    samples with ``u < w`` to ``a``: sorting the samples by ``u`` once turns
    every such mixture into a prefix sum over one pair of vertices, so a
    thousand targets cost one pass per pair of vertices, not per target.
    """

    def __init__(self, table, T, u):
        self.table, self.T, self.u = table, T, u
        n = table.n_samples
        self.order = np.argsort(u, kind="stable")
        self.u_sorted = np.asarray(u)[self.order]
        self.share = (np.full(n, 1.0 / n) if table.weights is None
                      else table.weights)[self.order]
        self.correct = table.correct[self.order]
        self.rows = np.arange(n)
        self.cache = {}

    def vertex(self, v):
        """Per-sample weighted cost and score terms of vertex ``v``, in ``u`` order."""
        if v not in self.cache:
            table, T = self.table, self.T
            e = table.exit_stages(T[v])[self.order]
            self.cache[v] = (self.share * table.costs(T[v])[e],
                             self.share * self.correct[self.rows, e])
        return self.cache[v]

    def evaluate(self, mixtures):
        table = self.table
        P = len(mixtures)
        costs = np.empty(P)
        scores = np.empty(P)
        groups = {}
        for p, (v, w) in enumerate(mixtures):
            groups.setdefault(tuple(int(i) for i in v), []).append(p)
        for verts, ps in groups.items():  # loop over vertex pairs; samples are vectorised
            if len(verts) == 1:
                c, s = self.vertex(verts[0])
                costs[ps], scores[ps] = c.sum(), s.sum()
                continue
            if len(verts) > 2:  # not produced by time_sharing; realise each one directly
                for p in ps:
                    e, cost = mixture_exits(table, self.T, *mixtures[p], self.u)
                    costs[p] = table.weighted_mean(cost)
                    scores[p] = table.weighted_mean(
                        table.correct[self.rows, e].astype(np.float64))
                continue
            (ca, sa), (cb, sb) = self.vertex(verts[0]), self.vertex(verts[1])
            first = np.array([mixtures[p][1][0] for p in ps], dtype=np.float64)
            # samples sent to the first vertex
            k = np.searchsorted(self.u_sorted, first, side="left")
            for val, a, b in ((costs, ca, cb), (scores, sa, sb)):
                head = np.concatenate([[0.0], np.cumsum(a - b)])
                val[ps] = b.sum() + head[k]
        return costs, scores


def warn_unreachable(target, reachable, what="flops_target"):
    """Warn that a FLOP target lies below the cheapest reachable cost.

    Parameters
    ----------
    target : float
        The requested target.
    reachable : float
        The cheapest cost any operating point reaches.
    what : str, default="flops_target"
        Name of the parameter in the message.

    Returns
    -------
    None
        A :class:`UserWarning` is issued, attributed to the user's call (the first
        frame outside the package).
    """
    warn(f"{what}={target:g} is below the cheapest reachable cost {reachable:.4f}; "
         "using the cheapest operating point.")
