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

Two searches share one entry point, :func:`sweep`:

* ``method="bisect"`` -- the paper's search (§IV-A, :func:`bisection_search`):
  for each FLOP target, random initial thresholds, then alternating
  bisection of one threshold at a time until the expected cost meets the
  target.
* ``method="coordinate"`` -- exact coordinate ascent on
  ``score - λ·cost`` (:func:`coordinate_path`): each 1-D step maximises the
  Lagrangian exactly over every candidate threshold of one stage (the
  sorted exit probabilities of the samples that reach it), with the head
  switched off as one more candidate; ``λ`` is swept from 0 (best score)
  upwards, warm-starting each ``λ`` from the previous solution. Each target
  is then served by the best path point whose cost does not exceed it.
"""

import warnings

import numpy as np

from ._hashing import MIX, assign_rows, mix64, seed_of

__all__ = [
    "ExitTable",
    "SEARCH_METHODS",
    "cumulative_cost",
    "exit_stages",
    "bisection_search",
    "coordinate_path",
    "sweep",
    "upper_hull",
    "time_sharing",
    "random_starts",
    "mixture_exits",
    "mixture_values",
    "evaluate_mixtures",
]

#: Threshold search methods accepted by :func:`sweep`.
SEARCH_METHODS = ("bisect", "coordinate")

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
    pred_labels : ndarray of int, shape (N, M), default=None
        Class index predicted at every stage (optional). Needed to rebuild
        routed predictions (:meth:`predict_indices`) for scores that are not
        a mean of per-sample terms.
    classes : ndarray of shape (n_classes,), default=None
        Labels of the class indices of ``pred_labels``.

    Notes
    -----
    Internally the arrays are kept stage-major and the exit pattern of a
    sample under a threshold vector is a bit code (bit ``k`` set when stage
    ``k``'s exit fires); its lowest set bit is the exit stage. This keeps
    every evaluation to a few passes over ``N`` small integers.
    """

    def __init__(self, conf, correct, stage_flops, exit_flops, last_head, sample_weight=None,
                 *, pred_labels=None, classes=None):
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
        if pred_labels is not None:
            pred_labels = np.asarray(pred_labels)
            if pred_labels.shape != (N, M):
                raise ValueError(
                    f"pred_labels has shape {pred_labels.shape}, expected {(N, M)}.")
        self.pred_labels = pred_labels
        self.classes = None if classes is None else np.asarray(classes)
        self.full_cost = cumulative_cost(
            self.stage_flops, self.exit_flops, np.ones(M - 1, bool), self.last_head
        )
        M1 = M - 1
        self._code_dtype = np.uint16 if M1 <= 16 else np.int64
        self._lut = None
        if M1 <= 16:
            codes = np.arange(2**M1, dtype=np.int64)
            self._lut = _lowest_set_bit(codes, M1).astype(np.intp)
        # correctness of every stage as one bit code per sample
        bits = np.ones(1, dtype=np.int64) << np.arange(M, dtype=np.int64)
        self._ccode = (correct.astype(np.int64) * bits[None, :]).sum(axis=1)
        self._q = None
        self._qc = None
        self._sorted = None

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
    def _fire_columns(self):
        """``quantized_columns`` in the narrowest integer type that holds them.

        ``q >= m`` on 16-bit integers reads half the memory; ``q = -1``
        (an exit probability of exactly 0) needs the signed 32-bit copy.
        """
        if getattr(self, "_qf", None) is None:
            q = self.quantized_columns
            self._qf = q.astype(np.uint16) if q.size and q.min() >= 0 else q
        return self._qf

    @property
    def coarse_columns(self):
        """``(q >> 8) + 1``: the coarse histogram bin of every sample per stage."""
        if self._qc is None:
            self._qc = (self.quantized_columns >> _SHIFT) + 1
        return self._qc

    @property
    def sorted_columns(self):
        """Per early stage: (order, conf in decreasing order, cut penalty).

        ``order`` sorts the samples by decreasing exit probability; the
        penalty (length N + 1) is ``-inf`` at the prefix lengths ``k`` that
        no threshold can produce (ties, ``k = 0`` and an all-zero tail), 0
        elsewhere: the first ``k`` samples of ``order`` are exactly those with
        ``conf > T`` for some ``T`` in [0, 1).
        """
        if self._sorted is None:
            out = []
            for j in range(self.n_stages - 1):
                c = self.conf_cols[j].astype(np.float64)
                order = np.argsort(-c, kind="stable")
                desc = c[order]
                pen = np.zeros(self.n_samples + 1)
                pen[0] = -np.inf
                pen[1:-1][desc[:-1] == desc[1:]] = -np.inf
                if desc[-1] <= 0:
                    pen[-1] = -np.inf
                out.append((order, desc, pen))
            self._sorted = out
        return self._sorted

    @property
    def _coarse_bins(self):
        """Per early stage: samples sorted by ``q`` and where each coarse bin starts."""
        if getattr(self, "_bins", None) is None:
            orders, starts = [], []
            edges = np.arange((GRID >> _SHIFT) + 3)
            for j in range(self.n_stages - 1):
                qc = self.coarse_columns[j]
                order = np.argsort(qc, kind="stable")
                orders.append(order)
                starts.append(np.searchsorted(qc[order], edges, side="left"))
            self._bins = (orders, starts)
        return self._bins

    @property
    def _bisect_luts(self):
        """Per bit code: cost of its exit, and per stage j the cost saved by leaving at j."""
        if getattr(self, "_blut", None) is None:
            scale = 1.0 / self.n_samples if self.weights is None else 1.0
            cost = self.full_cost
            ids = np.arange(self.n_stages)
            code_cost = cost[self._lut] * scale
            d_codes = [np.where(ids > j, cost[j] - cost, 0.0)[self._lut] * scale
                       for j in range(self.n_stages - 1)]
            self._blut = (code_cost, d_codes)
        return self._blut

    def _codes(self, thresholds=None, grid_index=None):
        M1 = self.n_stages - 1
        dt = self._code_dtype
        codes = np.zeros(self.n_samples, dtype=dt)
        for k in range(M1):
            if grid_index is not None:
                fire = self._fire_columns[k] >= int(grid_index[k])
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

    def _score_at(self, exits):
        """Mean correctness of the exit each sample takes."""
        hit = (self._ccode >> exits) & 1
        return self._mean(hit)

    def _cost_score(self, exits, stage_cost):
        return self._mean(stage_cost[exits]), self._score_at(exits)

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
        """Exit stage of every sample for one threshold vector, or one per sample.

        ``thresholds`` of shape (M-1,) or (N, M-1) (time sharing: each row
        routed with its own vector).
        """
        T = np.asarray(thresholds, dtype=np.float64)
        if self.n_stages == 1:
            return np.zeros(self.n_samples, dtype=np.intp)
        if T.ndim == 2:
            return exit_stages(self.conf, T)
        return self._exits(self._codes(thresholds=T))

    def predict_indices(self, thresholds):
        """Class index each sample gets when routed with ``thresholds``.

        Needs ``pred_labels``. ``thresholds`` of shape (M-1,) or (N, M-1).
        """
        if self.pred_labels is None:
            raise ValueError(
                "This ExitTable has no per-stage predictions (pred_labels); build it with "
                "estimator.exit_table(X) to rebuild routed predictions."
            )
        exits = self.exit_stages(thresholds)
        return self.pred_labels[np.arange(self.n_samples), exits]

    def min_cost(self):
        """Cost of the cheapest operating point (every sample leaves at stage 0)."""
        return float(self.full_cost[0]) if self.n_stages > 1 else 1.0


_SHIFT = 8  # coarse histogram: GRID >> _SHIFT bins, then a fine one inside one bin


def _bisect_stage(qc, q, d, base, target, tol, order=None, starts=None, csuf=None):
    """Bisection of one threshold on the exact step function of its cost.

    ``cost(mm) = base + sum(d[q >= mm])`` for grid index ``mm`` in
    [0, GRID] (``d`` is 0 for samples that do not reach the stage). The
    probes of the first levels are multiples of ``2**_SHIFT`` and are read
    from a coarse histogram over ``qc = (q >> _SHIFT) + 1`` (its suffix sums
    ``csuf`` may be passed in); the last levels lie inside one coarse bin and
    are read from a fine histogram of the samples in that bin (found through
    ``order``, the samples sorted by ``q``, and ``starts``, where each coarse
    bin begins in it, when given). Returns the probe closest to ``target``
    (stopping as soon as it is within ``tol``), its gap and its cost.
    """
    width = 1 << _SHIFT
    if csuf is None:
        csuf = _coarse_suffix(qc, d)
    best_m, best_gap, best_c = None, np.inf, np.nan
    lo, hi = 0, GRID
    # q >= mid  <=>  qc >= mid / width + 1  for mid a multiple of width
    while hi - lo > width and best_gap > tol:
        mid = (lo + hi) // 2
        c = base + csuf[mid // width + 1]
        gap = abs(c - target)
        if gap < best_gap:
            best_m, best_gap, best_c = mid, gap, c
        if c > target:
            hi = mid
        else:
            lo = mid
    if best_gap > tol:
        a = lo // width  # the remaining levels stay inside coarse bin a
        inside = _bin_members(qc, a, order, starts)
        fine = np.bincount(q[inside] - lo, weights=d[inside], minlength=width + 1)
        fsuf = np.append(np.cumsum(fine[::-1])[::-1], 0.0)
        above = base + csuf[a + 2]  # samples in higher coarse bins always exit
        while hi - lo > 1 and best_gap > tol:
            mid = (lo + hi) // 2
            c = above + fsuf[mid - lo + (lo - a * width)]
            gap = abs(c - target)
            if gap < best_gap:
                best_m, best_gap, best_c = mid, gap, c
            if c > target:
                hi = mid
            else:
                lo = mid
    return best_m, best_gap, best_c


def _coarse_suffix(qc, d):
    coarse = np.bincount(qc, weights=d, minlength=(GRID >> _SHIFT) + 2)
    return np.append(np.cumsum(coarse[::-1])[::-1], 0.0)


def _bin_members(qc, a, order=None, starts=None):
    """Samples whose ``q`` lies in coarse bin ``a`` (``q >> _SHIFT == a``)."""
    if order is None:
        return np.flatnonzero(qc == a + 1)
    return order[starts[a + 1]:starts[a + 2]]


def _suffix_at(qc, q, d, csuf, mm, order=None, starts=None):
    """``sum(d[q >= mm])`` from the coarse suffix sums and one coarse bin."""
    if mm >= GRID:
        return 0.0
    a = int(mm) >> _SHIFT
    if mm == a << _SHIFT:
        return float(csuf[a + 1])
    inside = _bin_members(qc, a, order, starts)
    part = d[inside][q[inside] >= mm].sum()
    return float(csuf[a + 2] + part)


def random_starts(seed, targets, n_thresholds):
    """Initial grid indices in ``[0, GRID]`` of the bisection, per target.

    Each start is a hash of ``(seed, target, stage)``: uniform over the grid,
    and the start for a target does not depend on the other targets of a
    sweep. A sweep's result at a target therefore equals the single-target
    search at that target with the same seed (what ``fit`` does with
    ``threshold_search="bisect"``), and a search over more targets contains
    every operating point of a search over fewer. Targets are keyed to
    1e-9, so ``0.25`` and ``linspace(0, 1, 1001)[250]`` share a start.

    Returns
    -------
    ndarray of int64, shape (len(targets), n_thresholds)
    """
    targets = np.atleast_1d(np.asarray(targets, dtype=np.float64))
    key = np.round(targets * 1e9).astype(np.int64).view(np.uint64)
    s = mix64(np.array([int(seed) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) ^ MIX[2])
    j = np.arange(1, n_thresholds + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = mix64(s ^ (key * MIX[0]))
        h = mix64(h[:, None] ^ (j[None, :] * MIX[1]))
    u = (h >> np.uint64(11)).astype(np.float64) / float(2**53)
    return np.minimum(np.floor(u * (GRID + 1)), GRID).astype(np.int64)


def bisection_search(table, target, random_state=None, tol=5e-4, max_rounds=20, init=None,
                     return_cost_score=False):
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

    Parameters
    ----------
    table : ExitTable
    target : float
    random_state : int, Generator, RandomState or None
        Seed of the random start (:func:`random_starts`): with an int seed,
        the start depends only on the seed and ``target``.
    tol : float
        Stop once the expected cost is this close to ``target``.
    max_rounds : int
        Alternating passes over the stages.
    init : array-like of shape (M - 1,), default=None
        Initial thresholds instead of random ones.
    return_cost_score : bool, default=False
        Also return the exact expected cost and score of the result (read
        from the search's final state, no re-evaluation).

    Returns
    -------
    thresholds : ndarray of shape (M - 1,)
    converged : bool
    cost, score : float
        Only with ``return_cost_score=True``.
    """
    M = table.n_stages
    if M == 1:
        out = (np.zeros(0), True)
        return out + table.evaluate(np.zeros(0)) if return_cost_score else out
    M1 = M - 1
    if init is None:
        m = random_starts(seed_of(random_state), [target], M1)[0]
    else:
        m = np.round(np.asarray(init, dtype=np.float64) * GRID).astype(np.int64)
    if target <= table.min_cost() + tol:
        T = np.zeros(M1)
        out = (T, target >= table.min_cost() - tol)
        return out + table.evaluate(T) if return_cost_score else out
    q, qc, qf = table.quantized_columns, table.coarse_columns, table._fire_columns
    cost = table.full_cost
    dt = table._code_dtype
    full = (1 << M1) - 1
    lut = table._lut
    w = table.weights
    if lut is not None:
        code_cost, d_codes = table._bisect_luts
    orders, starts = table._coarse_bins
    codes = table._codes(grid_index=m)
    if lut is not None:  # expected cost of the current state (full-cost model)
        if w is None:
            cur = float(np.bincount(codes, minlength=lut.shape[0]) @ code_cost)
        else:
            cur = float(np.bincount(codes, weights=w, minlength=lut.shape[0]) @ code_cost)
    converged = False
    for _ in range(max_rounds):
        changed = False
        for j in range(M1):
            keep = dt(full & ~(1 << j))
            ck = codes & keep  # exit pattern with stage j switched off
            if lut is not None:
                d = d_codes[j][ck]  # cost saved by leaving at j, not at the later exit
                if w is not None:
                    d *= w
                csuf = _coarse_suffix(qc[j], d)
                # the samples now leaving at j are those with q >= m[j]
                base = cur - _suffix_at(qc[j], q[j], d, csuf, m[j], orders[j], starts[j])
            else:
                e0 = table._exits(ck)
                ce = cost[e0]
                base = table._mean(ce)
                d = table._mean((cost[j] - ce) * (e0 > j), True)
                csuf = None
            best_m, best_gap, best_c = _bisect_stage(qc[j], q[j], d, base, target, tol,
                                                     orders[j], starts[j], csuf)
            if best_m is not None and best_m != m[j]:
                changed = True
                m[j] = best_m
                codes = ck | ((qf[j] >= int(best_m)).astype(dt) << dt(j))
                cur = best_c
            if best_gap <= tol:
                converged = True
                break
        if converged or not changed:
            break
    T = m / GRID
    if not return_cost_score:
        return T, converged
    c, s = table._cost_score(table._exits(codes), table.costs(T))
    return T, converged, c, s


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


def _coordinate_step(table, codes, T, j, lam, pieces):
    """Exact maximisation of ``score - lam * cost`` over ``T[j]``.

    Returns the new threshold, or ``None`` when no candidate improves on the
    current one.
    """
    M = table.n_stages
    N = table.n_samples
    dt = table._code_dtype
    full = (1 << (M - 1)) - 1
    keep = dt(full & ~(1 << j))
    ck = codes & keep
    e0 = table._exits(ck)  # exit of every sample with head j switched off
    reach = e0 > j
    active = T < 1.0
    active[j] = False
    c_off = cumulative_cost(table.stage_flops, table.exit_flops, active, table.last_head)
    w = table.weights
    W = float(reach.mean() if w is None else w @ reach)
    if W <= 0:
        return None  # nothing reaches stage j: every threshold is as good
    # gain of leaving at j rather than at the later exit, per sample that reaches j
    gain = (pieces["correct"][j] - ((table._ccode >> e0) & 1)) - lam * (c_off[j] - c_off[e0])
    gain *= reach
    gain *= (1.0 / N) if w is None else w
    order, desc, pen = table.sorted_columns[j]
    S = np.empty(N + 1)
    S[0] = 0.0
    np.cumsum(gain[order], out=S[1:])
    Sv = S + pen
    kb = N - int(np.argmax(Sv[::-1]))  # the cheapest of the best cuts
    overhead = lam * table.exit_flops[j] / table.stage_flops.sum() * W
    best_on = Sv[kb] - overhead
    # objective of the current threshold (relative to head j off)
    if T[j] >= 1.0:
        current = 0.0
    else:
        k_old = N - int(np.searchsorted(pieces["asc"][j], T[j], side="right"))
        current = S[k_old] - overhead
    eps = 1e-12 + pieces.get("min_gain", 0.0)
    if max(best_on, 0.0) <= current + eps:
        return None
    if best_on <= 0.0:
        return 1.0  # switching the head off is best
    # widest margin: the run of equal objective ending at kb
    idx = np.flatnonzero(S[:kb] != S[kb])
    ka = int(idx[-1]) + 1 if idx.size else 1
    if kb == N:
        return 0.0
    lo, hi = desc[kb], desc[ka - 1]
    t = lo + (hi - lo) / 2.0
    if not lo <= t < hi:
        t = lo
    return float(t)


def _ascend(table, T, codes, lam, pieces, max_rounds):
    """Coordinate ascent at one ``lam`` from ``(T, codes)``, in place; returns codes."""
    M1 = table.n_stages - 1
    dt = table._code_dtype
    last_change = None
    j = 0
    for _ in range(max_rounds * M1):
        if last_change == j:
            break  # a full pass without change
        t = _coordinate_step(table, codes, T, j, lam, pieces)
        if t is not None and t != T[j]:
            T[j] = t
            keep = dt(((1 << M1) - 1) & ~(1 << j))
            codes = (codes & keep) | ((table.conf_cols[j] > t).astype(dt) << dt(j))
            last_change = j
        elif last_change is None and j == M1 - 1:
            break  # the first pass changed nothing
        j = (j + 1) % M1
    return codes


def coordinate_path(table, lambdas=None, *, n_lambdas=100, max_rounds=30, init=None,
                    min_gap=1e-3, min_gain=1.0, progress=None):
    """Exact coordinate ascent on ``score - λ·cost`` along a path of ``λ``.

    For each ``λ`` the thresholds are optimised one stage at a time: with the
    other thresholds fixed, ``score - λ·cost`` as a function of ``T_j`` is a
    step function that changes only at the exit probabilities of the samples
    that reach stage ``j``, so one sort (cached on the table) and one
    cumulative sum give its exact maximum over every candidate threshold,
    and over switching the head off (``T_j = 1``, which also saves its
    overhead). Among equally good thresholds the one in the middle of the
    widest gap between the tuning samples' probabilities is kept. Passes over
    the stages repeat until none changes; the objective never decreases, so
    this terminates. A step is taken only if it gains more than
    ``min_gain`` samples' worth of objective (``min_gain / N``): on small
    tuning sets, chasing a single sample fits its noise (measured in
    ``benchmarks/bench_search.py``: one sample closes the held-out gap to the
    bisection on 1.3k-sample tuning sets and changes nothing on 15k+).

    The path starts from ``init`` (by default every head off: the base
    model) at ``λ = 0`` and sweeps ``λ`` upwards, each ``λ`` warm-started
    from the previous solution (costs fall as ``λ`` grows). With
    ``lambdas=None`` a third of the ``n_lambdas`` evaluations go to a
    geometric grid and the rest walk the hull: for two consecutive hull
    vertices more than ``min_gap`` apart in cost, ``λ`` is set to the slope
    of the edge between them and the ascent restarts from the dearer vertex;
    a point above the edge splits it. This is the classic way to trace a
    concave trade-off with a Lagrangian solver.

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
    min_gap : float, default=1e-3
        Hull edges shorter than this (in cost) are not refined.
    min_gain : float, default=1.0
        Smallest gain of a step, in samples (effective samples when
        weighted); 0 takes every strict improvement.
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
    M = table.n_stages
    M1 = M - 1
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
    codes = table._codes(thresholds=T)
    correct = table.correct_flat.reshape(M, table.n_samples)
    w = table.weights
    n_eff = table.n_samples if w is None else 1.0 / float(w @ w)
    pieces = {
        "correct": correct.astype(np.int64),
        "asc": [d[::-1] for _, d, _ in table.sorted_columns],
        "min_gain": float(min_gain) / n_eff,
    }
    out_T, out_c, out_s, out_l = [], [], [], []

    def record(T, codes, lam):
        c, s = table._cost_score(table._exits(codes), table.costs(T))
        out_T.append(T.copy())
        out_c.append(c)
        out_s.append(s)
        out_l.append(lam)

    it = lams if progress is None else progress(lams)
    for lam in it:
        codes = _ascend(table, T, codes, lam, pieces, max_rounds)
        record(T, codes, lam)
    if refine:
        tried = set()
        budget = n_total - len(out_T)
        while budget > 0:
            c = np.asarray(out_c)
            s = np.asarray(out_s)
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
                T = out_T[b].copy()
                codes = _ascend(table, T, table._codes(thresholds=T), lam, pieces, max_rounds)
                record(T, codes, lam)
                budget -= 1
    return np.array(out_T), np.array(out_c), np.array(out_s), np.array(out_l)


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


def mixture_exits(table, T, vertices, weights, u, cache=None):
    """Exit stage and cost of every sample of ``table`` under a time-sharing mixture.

    Each sample is sent to one threshold vector ``T[vertices[c]]`` exactly as
    the router does (:func:`assign_rows` of its uniform ``u`` and
    ``weights``), so the result is the realised routing, not its expectation.

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
    """Expected value of each mixture ``(vertices, weights)``: weights times ``values[vertices]``."""
    return np.array([float(w @ values[v]) for v, w in mixtures])


def evaluate_mixtures(table, T, mixtures, u=None):
    """Cost and score of each time-sharing mixture over the rows of ``T``.

    ``mixtures`` is a list of ``(vertices, weights)``. Without ``u`` the values
    are expectations (the weights times each vertex's cost and score); with
    one uniform per sample they are the realised values of the routing that
    sends each sample to one vertex (:func:`mixture_exits`), which is what an
    estimator serving that mixture scores on these samples.

    A two-vertex mixture ``(a, b)`` with weights ``(w, 1 - w)`` sends the
    samples with ``u < w`` to ``a``: sorting the samples by ``u`` once turns
    every such mixture into a prefix sum over one pair of vertices, so a
    thousand targets cost one pass per pair of vertices, not per target.

    Returns
    -------
    costs, scores : ndarray of shape (len(mixtures),)
    """
    P = len(mixtures)
    if u is None:
        vc, vs = table.evaluate_many(T)
        return mixture_values(mixtures, vc), mixture_values(mixtures, vs)
    n = table.n_samples
    order = np.argsort(u, kind="stable")
    u_sorted = np.asarray(u)[order]
    share = (np.full(n, 1.0 / n) if table.weights is None else table.weights)[order]
    correct = table.correct[order]
    rows = np.arange(n)
    cache = {}

    def vertex(v):  # per-sample weighted cost and score terms, in u order
        if v not in cache:
            e = table.exit_stages(T[v])[order]
            cache[v] = (share * table.costs(T[v])[e], share * correct[rows, e])
        return cache[v]

    costs = np.empty(P)
    scores = np.empty(P)
    groups = {}
    for p, (v, w) in enumerate(mixtures):
        groups.setdefault(tuple(int(i) for i in v), []).append(p)
    for verts, ps in groups.items():  # loop over vertex pairs; samples are vectorised
        if len(verts) == 1:
            c, s = vertex(verts[0])
            costs[ps], scores[ps] = c.sum(), s.sum()
            continue
        if len(verts) > 2:  # not produced by time_sharing; realise each one directly
            for p in ps:
                e, cost = mixture_exits(table, T, *mixtures[p], u)
                costs[p] = table._mean(cost)
                scores[p] = table._mean(table.correct[rows, e].astype(np.float64))
            continue
        (ca, sa), (cb, sb) = vertex(verts[0]), vertex(verts[1])
        first = np.array([mixtures[p][1][0] for p in ps], dtype=np.float64)
        k = np.searchsorted(u_sorted, first, side="left")  # samples sent to the first vertex
        for val, a, b in ((costs, ca, cb), (scores, sa, sb)):
            head = np.concatenate([[0.0], np.cumsum(a - b)])
            val[ps] = b.sum() + head[k]
    return costs, scores


def warn_unreachable(target, reachable, what="flops_target"):
    warnings.warn(
        f"{what}={target:g} is below the cheapest reachable cost {reachable:.4f}; "
        "using the cheapest operating point.",
        UserWarning,
        stacklevel=3,
    )
