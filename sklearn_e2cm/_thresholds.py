"""Threshold vectors: evaluation, search, sweep, hull and time sharing.

Everything here works on an :class:`ExitTable`, the per-stage arrays cached
once on the tuning data (max exit probability and correctness of every
sample at every stage, plus the cost model). Evaluating or searching
thresholds never runs a stage again.

Exit rule (DESIGN §2.5): a sample leaves after stage ``j`` (``j < M-1``) if
``conf[i, j] > T[j]``; the last stage always exits. A threshold ``>= 1`` can
never fire, so that exit head is switched off and its overhead is not paid.

Cost model (DESIGN §2.8): exiting after stage ``j`` costs
``(Σ_{i≤j} c_i + Σ_{i≤j, head i on} e_i) / Σ_i c_i``.
"""

import warnings

import numpy as np

__all__ = [
    "ExitTable",
    "cumulative_cost",
    "exit_stages",
    "bisection_search",
    "sweep",
    "upper_hull",
    "time_sharing",
    "row_uniforms",
    "assign_rows",
]

#: Resolution of the threshold grid used by the bisection: thresholds are
#: multiples of ``1 / GRID`` (the bisection halves [0, 1] at most 16 times).
GRID = 2**16


def cumulative_cost(stage_flops, exit_flops, active, last_head=True):
    """Normalised cost of exiting after each stage.

    Parameters
    ----------
    stage_flops, exit_flops : array of shape (M,)
        Per-sample FLOPs of each stage and of each stage's exit head
        (feature reduction included).
    active : array of bool, shape (M - 1,) or (V, M - 1)
        Which early-exit heads are evaluated (threshold < 1).
    last_head : bool
        Whether the last stage decides with a class-means head (True) or
        with the base model's own classifier (False, no overhead).

    Returns
    -------
    cost : array of shape (M,) or (V, M)
        With a single stage the cost is 1.0 (nothing to exit from).

    Examples
    --------
    >>> cumulative_cost([1.0, 3.0], [0.5, 0.0], [True], last_head=False)
    array([0.375, 1.125])
    """
    c = np.asarray(stage_flops, dtype=np.float64)
    e = np.asarray(exit_flops, dtype=np.float64)
    active = np.asarray(active, dtype=bool)
    M = c.shape[0]
    single = active.ndim == 1
    active = np.atleast_2d(active)
    if M == 1:
        out = np.ones((active.shape[0], 1))
        return out[0] if single else out
    total = c.sum()
    if not total > 0:
        raise ValueError(
            f"The stages cost {total} FLOPs in total; costs cannot be normalised. "
            "Pass stage_costs= with positive per-stage FLOPs."
        )
    on = np.concatenate([active, np.full((active.shape[0], 1), bool(last_head))], axis=1)
    out = np.cumsum(c[None, :] + e[None, :] * on, axis=1) / total
    return out[0] if single else out


def exit_stages(conf, thresholds):
    """Stage at which each sample exits, vectorised over samples.

    Parameters
    ----------
    conf : array of shape (N, M) or (N, M - 1)
        Max exit probability of every sample at every stage.
    thresholds : array of shape (M - 1,) or (N, M - 1)
        One threshold vector, or one per sample (time sharing).

    Examples
    --------
    >>> import numpy as np
    >>> exit_stages(np.array([[0.9, 0.5, 0.1], [0.2, 0.3, 0.1]]), np.array([0.8, 0.8]))
    array([0, 2])
    """
    T = np.asarray(thresholds, dtype=np.float64)
    M1 = T.shape[-1]
    N = conf.shape[0]
    if M1 == 0:
        return np.zeros(N, dtype=np.intp)
    ex = conf[:, :M1] > (T if T.ndim == 2 else T[None, :])
    out = ex.argmax(axis=1)
    out[~ex.any(axis=1)] = M1
    return out


def _lowest_set_bit(codes, n_bits, lut=None):
    """Index of the lowest set bit of each code (``n_bits`` where none is set)."""
    if lut is not None:
        return lut[codes]
    codes = codes.astype(np.int64)
    out = np.frexp((codes & (-codes)).astype(np.float64))[1] - 1
    out[codes == 0] = n_bits
    return out


class ExitTable:
    """Per-sample, per-stage arrays cached on the tuning data.

    Parameters
    ----------
    conf : ndarray of shape (N, M)
        Max exit probability per stage (the last column is never used).
    correct : ndarray of bool, shape (N, M)
        Whether the prediction made at each stage is right (accuracy) or agrees
        with a reference (agreement).
    stage_flops, exit_flops : ndarray of shape (M,)
    last_head : bool
        Whether the last stage decides with a class-means head.
    sample_weight : ndarray of shape (N,), default=None

    Notes
    -----
    Internally the arrays are kept stage-major and the exit pattern of a
    sample under a threshold vector is a bit code (bit ``k`` set when stage
    ``k``'s exit fires); its lowest set bit is the exit stage. This keeps
    every evaluation to a few passes over ``N`` small integers.
    """

    def __init__(self, conf, correct, stage_flops, exit_flops, last_head, sample_weight=None):
        conf = np.asarray(conf)
        correct = np.asarray(correct, dtype=bool)
        N, M = conf.shape
        if correct.shape != (N, M):
            raise ValueError(f"correct has shape {correct.shape}, expected {(N, M)}.")
        if M - 1 > 62:
            raise ValueError(f"At most 63 stages are supported; got {M}.")
        self.conf_cols = np.ascontiguousarray(conf.T)
        self.correct_flat = np.ascontiguousarray(correct.T).ravel()
        self.n_samples = N
        self.stage_flops = np.asarray(stage_flops, dtype=np.float64)
        self.exit_flops = np.asarray(exit_flops, dtype=np.float64)
        self.last_head = bool(last_head)
        if sample_weight is None:
            self.weights = None
        else:
            w = np.asarray(sample_weight, dtype=np.float64)
            self.weights = w / w.sum()
        self.full_cost = cumulative_cost(
            self.stage_flops, self.exit_flops, np.ones(M - 1, bool), self.last_head
        )
        M1 = M - 1
        self._code_dtype = np.uint16 if M1 <= 16 else np.int64
        self._lut = None
        if M1 <= 16:
            codes = np.arange(2**M1, dtype=np.int64)
            self._lut = _lowest_set_bit(codes, M1).astype(np.intp)
        self._q = None
        self._qc = None

    @property
    def n_stages(self):
        return self.conf_cols.shape[0]

    @property
    def conf(self):
        return self.conf_cols.T

    @property
    def correct(self):
        return self.correct_flat.reshape(self.n_stages, self.n_samples).T

    def _mean(self, values, per_sample=False):
        """Weighted mean of per-sample values, or the per-sample terms of it."""
        if per_sample:
            return values * (1.0 / self.n_samples if self.weights is None else self.weights)
        if self.weights is None:
            return float(values.mean())
        return float(self.weights @ values)

    @property
    def quantized_columns(self):
        """``q = ceil(conf * GRID) - 1`` per stage, shape (M-1, N).

        ``conf > m / GRID`` exactly when ``q >= m``.
        """
        if self._q is None:
            q = np.ceil(self.conf_cols[:-1].astype(np.float64) * GRID) - 1
            self._q = np.ascontiguousarray(q.astype(np.int32))
        return self._q

    @property
    def coarse_columns(self):
        """``(q >> 8) + 1``: the coarse histogram bin of every sample per stage."""
        if self._qc is None:
            self._qc = (self.quantized_columns >> _SHIFT) + 1
        return self._qc

    def _codes(self, thresholds=None, grid_index=None):
        M1 = self.n_stages - 1
        dt = self._code_dtype
        codes = np.zeros(self.n_samples, dtype=dt)
        for k in range(M1):
            if grid_index is not None:
                fire = self.quantized_columns[k] >= grid_index[k]
            else:
                fire = self.conf_cols[k] > thresholds[k]
            codes |= fire.astype(dt) << dt(k)
        return codes

    def _exits(self, codes):
        return _lowest_set_bit(codes, self.n_stages - 1, self._lut)

    def costs(self, thresholds):
        """Cumulative cost per stage for one (M-1,) or several (V, M-1) vectors."""
        T = np.asarray(thresholds, dtype=np.float64)
        return cumulative_cost(self.stage_flops, self.exit_flops, T < 1.0, self.last_head)

    def _cost_score(self, exits, stage_cost):
        cost = self._mean(stage_cost[exits])
        score = self._mean(self.correct_flat[exits * self.n_samples + np.arange(self.n_samples)])
        return cost, score

    def evaluate(self, thresholds):
        """Expected normalised cost and score of one threshold vector."""
        T = np.asarray(thresholds, dtype=np.float64)
        if self.n_stages == 1:
            return 1.0, self._mean(self.correct_flat.astype(np.float64))
        exits = self._exits(self._codes(thresholds=T))
        return self._cost_score(exits, self.costs(T))

    def evaluate_many(self, thresholds):
        """Cost and score of each row of a (P, M-1) matrix of threshold vectors."""
        T = np.atleast_2d(np.asarray(thresholds, dtype=np.float64))
        out = np.array([self.evaluate(t) for t in T]).reshape(-1, 2)
        return out[:, 0], out[:, 1]

    def exit_stages(self, thresholds):
        """Exit stage of every sample for one threshold vector."""
        if self.n_stages == 1:
            return np.zeros(self.n_samples, dtype=np.intp)
        return self._exits(self._codes(thresholds=np.asarray(thresholds, dtype=np.float64)))

    def min_cost(self):
        """Cost of the cheapest operating point (every sample leaves at stage 0)."""
        return float(self.full_cost[0]) if self.n_stages > 1 else 1.0


_SHIFT = 8  # coarse histogram: GRID >> _SHIFT bins, then a fine one inside one bin


def _bisect_stage(qc, q, d, base, target, tol):
    """Bisection of one threshold on the exact step function of its cost.

    ``cost(mm) = base + sum(d[q >= mm])`` for grid index ``mm`` in
    [0, GRID] (``d`` is 0 for samples that do not reach the stage). The
    probes of the first levels are multiples of ``2**_SHIFT`` and are read
    from a coarse histogram over ``qc = (q >> _SHIFT) + 1``; the last levels
    lie inside one coarse bin and are read from a fine histogram of the
    samples in that bin. Returns the probe closest to ``target`` (stopping as
    soon as it is within ``tol``) and its gap.
    """
    width = 1 << _SHIFT
    coarse = np.bincount(qc, weights=d, minlength=(GRID >> _SHIFT) + 2)
    csuf = np.append(np.cumsum(coarse[::-1])[::-1], 0.0)
    best_m, best_gap = None, np.inf
    lo, hi = 0, GRID
    # q >= mid  <=>  qc >= mid / width + 1  for mid a multiple of width
    while hi - lo > width and best_gap > tol:
        mid = (lo + hi) // 2
        c = base + csuf[mid // width + 1]
        gap = abs(c - target)
        if gap < best_gap:
            best_m, best_gap = mid, gap
        if c > target:
            hi = mid
        else:
            lo = mid
    if best_gap > tol:
        a = lo // width  # the remaining levels stay inside coarse bin a
        inside = np.flatnonzero(qc == a + 1)
        fine = np.bincount(q[inside] - lo, weights=d[inside], minlength=width + 1)
        fsuf = np.append(np.cumsum(fine[::-1])[::-1], 0.0)
        above = base + csuf[a + 2]  # samples in higher coarse bins always exit
        while hi - lo > 1 and best_gap > tol:
            mid = (lo + hi) // 2
            c = above + fsuf[mid - lo + (lo - a * width)]
            gap = abs(c - target)
            if gap < best_gap:
                best_m, best_gap = mid, gap
            if c > target:
                hi = mid
            else:
                lo = mid
    return best_m, best_gap


def bisection_search(table, target, random_state=None, tol=5e-4, max_rounds=20, init=None):
    """The paper's threshold search (§IV-A) for one FLOP target.

    Thresholds start uniformly at random in [0, 1] (on the ``1/GRID`` grid);
    then, stage by stage and alternating over the stages, each ``T_j`` is
    binary-searched over [0, 1]: lowered when the expected cost on the tuning
    data is above ``target``, raised otherwise, until the cost is within
    ``tol`` of the target. Cost is non-decreasing in every ``T_j``, so the
    bisection converges. Every probe is evaluated exactly on the cached
    arrays (no forward pass): one histogram of the samples that reach stage
    ``j`` gives the cost of every probe. A target at or below the cheapest
    reachable cost returns all-zero thresholds (everything exits at the
    first stage).

    Returns
    -------
    thresholds : ndarray of shape (M - 1,)
    converged : bool
    """
    M = table.n_stages
    if M == 1:
        return np.zeros(0), True
    rng = random_state if isinstance(random_state, np.random.Generator) else (
        np.random.default_rng(random_state))
    M1 = M - 1
    if init is None:
        m = rng.integers(0, GRID, size=M1, endpoint=True).astype(np.int64)
    else:
        m = np.round(np.asarray(init, dtype=np.float64) * GRID).astype(np.int64)
    if target <= table.min_cost() + tol:
        return np.zeros(M1), target >= table.min_cost() - tol
    q, qc = table.quantized_columns, table.coarse_columns
    cost = table.full_cost
    dt = table._code_dtype
    full = (1 << M1) - 1
    codes = table._codes(grid_index=m)
    converged = False
    for _ in range(max_rounds):
        changed = False
        for j in range(M1):
            keep = dt(full & ~(1 << j))
            e0 = table._exits(codes & keep)  # exit stage with stage j switched off
            ce = cost[e0]
            base = table._mean(ce)
            d = table._mean((cost[j] - ce) * (e0 > j), True)
            best_m, best_gap = _bisect_stage(qc[j], q[j], d, base, target, tol)
            if best_m is not None and best_m != m[j]:
                changed = True
                m[j] = best_m
                codes = (codes & keep) | ((q[j] >= best_m).astype(dt) << dt(j))
            if best_gap <= tol:
                converged = True
                break
        if converged or not changed:
            break
    return m / GRID, converged


def sweep(table, targets, method="bisect", random_state=None, tol=5e-4, progress=None):
    """Search thresholds for every target.

    Returns
    -------
    thresholds : ndarray of shape (P, M - 1)
    costs, scores : ndarray of shape (P,)
        Expected cost and score of each threshold vector on the table.
    """
    if method != "bisect":
        raise ValueError(f"Unknown threshold search method {method!r}; accepted: 'bisect'.")
    rng = np.random.default_rng(random_state) if not isinstance(
        random_state, np.random.Generator) else random_state
    targets = np.asarray(targets, dtype=np.float64)
    T = np.empty((targets.shape[0], table.n_stages - 1))
    it = range(targets.shape[0]) if progress is None else progress(range(targets.shape[0]))
    for p in it:
        T[p], _ = bisection_search(table, targets[p], rng, tol=tol)
    costs, scores = table.evaluate_many(T)
    return T, costs, scores


def upper_hull(costs, scores):
    """Vertices of the upper concave hull of (cost, score) points.

    Only the rising part is kept (left to right up to the best score): a
    point right of the best-scoring vertex is dominated by it.

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


def time_sharing(hull_costs, target):
    """Mix of the two hull vertices around ``target``.

    Returns
    -------
    vertices : ndarray of int, shape (1,) or (2,)
        Indices into the hull arrays.
    weights : ndarray of shape (1,) or (2,)
        Probability of serving a sample with each vertex; the expected cost
        of the mix is exactly ``target`` when the target lies on the hull.
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


_MIX = np.array(
    [0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB], dtype=np.uint64
)


def row_uniforms(X, seed=0):
    """One uniform number in [0, 1) per row, a deterministic hash of the row.

    Time sharing sends each sample to one of the hull vertices with a number
    drawn from its own content and the seed, so the decision for a sample
    does not depend on the batch it arrives in or on its position.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.arange(6.0).reshape(3, 2)
    >>> u = row_uniforms(X, seed=0)
    >>> bool(np.all(u == row_uniforms(X[::-1], seed=0)[::-1]))
    True
    """
    X = np.ascontiguousarray(np.asarray(X))
    n = X.shape[0]
    raw = X.reshape(n, -1).view(np.uint8).reshape(n, -1)
    pad = (-raw.shape[1]) % 8
    if pad:
        raw = np.concatenate([raw, np.zeros((n, pad), np.uint8)], axis=1)
    words = np.ascontiguousarray(raw).view(np.uint64)
    with np.errstate(over="ignore"):
        pos = np.arange(1, words.shape[1] + 1, dtype=np.uint64) * _MIX[0]
        h = words ^ pos[None, :]
        h = (h ^ (h >> np.uint64(30))) * _MIX[1]
        h = (h ^ (h >> np.uint64(27))) * _MIX[2]
        h = h ^ (h >> np.uint64(31))
        acc = np.bitwise_xor.reduce(h * (pos[None, :] | np.uint64(1)), axis=1)
        acc = acc ^ (np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _MIX[0])
        acc = (acc ^ (acc >> np.uint64(30))) * _MIX[1]
        acc = (acc ^ (acc >> np.uint64(27))) * _MIX[2]
        acc = acc ^ (acc >> np.uint64(31))
    return (acc >> np.uint64(11)).astype(np.float64) / float(2**53)


def assign_rows(u, weights):
    """Index of the mixture component of each row from its uniform ``u``."""
    cw = np.cumsum(np.asarray(weights, dtype=np.float64))
    cw[-1] = 1.0
    return np.minimum(np.searchsorted(cw, u, side="right"), len(cw) - 1)


def warn_unreachable(target, reachable, what="flops_target"):
    warnings.warn(
        f"{what}={target:g} is below the cheapest reachable cost {reachable:.4f}; "
        "using the cheapest operating point.",
        UserWarning,
        stacklevel=3,
    )
