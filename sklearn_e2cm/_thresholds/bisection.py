"""The paper's threshold search: alternating bisection of one threshold at a time.

For one FLOP target, thresholds start at random on the ``1 / GRID`` grid
(:func:`random_starts`); then each threshold in turn is bisected until the
expected cost on the tuning data meets the target (:func:`bisection_search`).
Every probe is read exactly from histograms of the cached
:class:`~sklearn_e2cm._thresholds.table.ExitTable` arrays.
"""

import numpy as np

from .._hashing import MIX, mix64, seed_of
from .table import COARSE_SHIFT, GRID

__all__ = ["bisection_search", "random_starts"]


def random_starts(seed, targets, n_thresholds):
    """Initial grid indices in ``[0, GRID]`` of the bisection, per target.

    Each start is a hash of ``(seed, target, stage)``: uniform over the grid,
    and the start for a target does not depend on the other targets of a
    sweep. A sweep's result at a target therefore equals the single-target
    search at that target with the same seed (what ``fit`` does with
    ``threshold_search="bisect"``), and a search over more targets contains
    every operating point of a search over fewer. Targets are keyed to
    1e-9, so ``0.25`` and ``linspace(0, 1, 1001)[250]`` share a start.

    Parameters
    ----------
    seed : int
        Seed of the search (:func:`~sklearn_e2cm._hashing.seed_of`).
    targets : array-like of float, shape (P,)
        FLOP targets.
    n_thresholds : int
        Thresholds per vector (``M - 1``).

    Returns
    -------
    starts : ndarray of int64, shape (P, n_thresholds)

    Examples
    --------
    >>> starts = random_starts(0, [0.25, 0.5], 3)
    >>> starts.shape, bool(starts.min() >= 0 and starts.max() <= GRID)
    ((2, 3), True)
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


# ------------------------------------------------------------------ histograms of one stage
def _coarse_suffix(qc, d):
    """Suffix sums of ``d`` over the coarse bins: ``out[b] = sum(d[qc >= b])``."""
    coarse = np.bincount(qc, weights=d, minlength=(GRID >> COARSE_SHIFT) + 2)
    return np.append(np.cumsum(coarse[::-1])[::-1], 0.0)


def _bin_members(qc, a, order=None, starts=None):
    """Samples whose ``q`` lies in coarse bin ``a`` (``q >> COARSE_SHIFT == a``)."""
    if order is None:
        return np.flatnonzero(qc == a + 1)
    return order[starts[a + 1]:starts[a + 2]]


def _suffix_at(qc, q, d, csuf, mm, order=None, starts=None):
    """``sum(d[q >= mm])`` from the coarse suffix sums and one coarse bin."""
    if mm >= GRID:
        return 0.0
    a = int(mm) >> COARSE_SHIFT
    if mm == a << COARSE_SHIFT:
        return float(csuf[a + 1])
    inside = _bin_members(qc, a, order, starts)
    part = d[inside][q[inside] >= mm].sum()
    return float(csuf[a + 2] + part)


# ------------------------------------------------------------------ bisection of one stage
def _halve(lo, hi, min_width, cost_at, target, tol, best):
    """Bisect the grid interval ``[lo, hi]`` until it is ``min_width`` wide.

    ``cost_at(mid)`` is the expected cost with the threshold at grid index
    ``mid``; cost does not decrease with the threshold, so a probe dearer
    than ``target`` moves ``hi`` down and a cheaper one moves ``lo`` up.
    ``best = (index, gap, cost)`` is the probe closest to ``target`` so far;
    the loop stops early once its gap is within ``tol``. Returns the final
    ``lo, hi`` and the updated ``best``.
    """
    best_m, best_gap, best_c = best
    while hi - lo > min_width and best_gap > tol:
        mid = (lo + hi) // 2
        c = cost_at(mid)
        gap = abs(c - target)
        if gap < best_gap:
            best_m, best_gap, best_c = mid, gap, c
        if c > target:
            hi = mid
        else:
            lo = mid
    return lo, hi, (best_m, best_gap, best_c)


def _bisect_stage(qc, q, d, base, target, tol, order=None, starts=None, csuf=None):
    """Bisection of one threshold on the exact step function of its cost.

    ``cost(mm) = base + sum(d[q >= mm])`` for grid index ``mm`` in
    [0, GRID] (``d`` is 0 for samples that do not reach the stage). The
    probes of the first levels are multiples of ``2**COARSE_SHIFT`` and are
    read from a coarse histogram over ``qc = (q >> COARSE_SHIFT) + 1`` (its
    suffix sums ``csuf`` may be passed in); the last levels lie inside one
    coarse bin and are read from a fine histogram of the samples in that bin
    (found through ``order``, the samples sorted by ``q``, and ``starts``,
    where each coarse bin begins in it, when given). Returns the probe
    closest to ``target`` (stopping as soon as it is within ``tol``), its gap
    and its cost.
    """
    width = 1 << COARSE_SHIFT
    if csuf is None:
        csuf = _coarse_suffix(qc, d)
    best = (None, np.inf, np.nan)
    # q >= mid  <=>  qc >= mid / width + 1  for mid a multiple of width
    lo, hi, best = _halve(0, GRID, width, lambda mid: base + csuf[mid // width + 1],
                          target, tol, best)
    if best[1] > tol:
        a = lo // width  # the remaining levels stay inside coarse bin a (lo == a * width)
        inside = _bin_members(qc, a, order, starts)
        fine = np.bincount(q[inside] - lo, weights=d[inside], minlength=width + 1)
        fsuf = np.append(np.cumsum(fine[::-1])[::-1], 0.0)
        above = base + csuf[a + 2]  # samples in higher coarse bins always exit
        _, _, best = _halve(lo, hi, 1, lambda mid: above + fsuf[mid - a * width],
                            target, tol, best)
    return best


def _stage_profile(table, j, codes_off, current_cost, m_j):
    """The cost of every threshold of stage ``j``, as :func:`_bisect_stage` reads it.

    ``codes_off`` are the exit codes with stage ``j``'s exit switched off
    and ``m_j`` the current grid index of ``T[j]``. Returns ``(d, base,
    csuf)``: the per-sample cost saved by leaving at ``j`` (0 for samples
    that leave earlier), the expected cost when nobody leaves at ``j``, and
    the coarse suffix sums of ``d`` (None when :func:`_bisect_stage` is to
    compute them). With the bisection lookup tables, ``base`` is derived
    from ``current_cost``, the cost of the current state.
    """
    q, qc = table.quantized_columns[j], table.coarse_columns[j]
    lookup = table.bisection_lookup
    if lookup is not None:
        _, saved = lookup
        d = saved[j][codes_off]  # cost saved by leaving at j, not at the later exit
        if table.weights is not None:
            d *= table.weights
        csuf = _coarse_suffix(qc, d)
        orders, starts = table.coarse_bins
        # the samples now leaving at j are those with q >= m_j
        base = current_cost - _suffix_at(qc, q, d, csuf, m_j, orders[j], starts[j])
        return d, base, csuf
    cost = table.full_cost
    e0 = table.exits_of_codes(codes_off)
    ce = cost[e0]
    base = table.weighted_mean(ce)
    d = table.weighted_mean((cost[j] - ce) * (e0 > j), True)
    return d, base, None


def _state_cost(table, codes):
    """Expected full-cost-model cost of the exit codes (None without lookup tables)."""
    lookup = table.bisection_lookup
    if lookup is None:
        return None
    code_cost, _ = lookup
    n_codes = table.lowest_bit_table.shape[0]
    if table.weights is None:
        return float(np.bincount(codes, minlength=n_codes) @ code_cost)
    return float(np.bincount(codes, weights=table.weights, minlength=n_codes) @ code_cost)


# ------------------------------------------------------------------ the search
def bisection_search(table, target, random_state=None, tol=5e-4, max_rounds=20, init=None,
                     return_cost_score=False):
    """The paper's threshold search (Görmez et al., §IV-A) for one FLOP target.

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

    Examples
    --------
    Four samples, three stages of equal cost and free exit heads; half the
    cost is two samples leaving at the first stage and two at the second:

    >>> import numpy as np
    >>> from sklearn_e2cm._thresholds import ExitTable
    >>> conf = np.array([[0.9, 0.2, 0.0], [0.3, 0.8, 0.0], [0.1, 0.4, 0.0], [0.6, 0.7, 0.0]])
    >>> correct = np.array([[1, 1, 1], [0, 1, 1], [0, 0, 1], [1, 1, 1]], dtype=bool)
    >>> table = ExitTable(conf, correct, [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], last_head=False)
    >>> T, converged, cost, score = bisection_search(table, 0.5, random_state=0,
    ...                                              return_cost_score=True)
    >>> table.exit_stages(T), converged, round(cost, 6), score
    (array([0, 1, 1, 0]), True, 0.5, 0.75)
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
    codes, converged = _alternate(table, m, target, tol, max_rounds)
    T = m / GRID
    if not return_cost_score:
        return T, converged
    c, s = table.cost_and_score(table.exits_of_codes(codes), table.costs(T))
    return T, converged, c, s


def _alternate(table, m, target, tol, max_rounds):
    """Alternating bisection over the stages from grid indices ``m`` (updated in place).

    Returns the exit codes of the final state and whether the cost came
    within ``tol`` of ``target``.
    """
    M1 = table.n_stages - 1
    qc, fire = table.coarse_columns, table.fire_columns
    orders, starts = table.coarse_bins
    dt = table.code_dtype
    full = (1 << M1) - 1
    codes = table.exit_codes(grid_index=m)
    cur = _state_cost(table, codes)  # expected cost of the current state (full-cost model)
    converged = False
    for _ in range(max_rounds):
        changed = False
        for j in range(M1):
            ck = codes & dt(full & ~(1 << j))  # exit pattern with stage j switched off
            d, base, csuf = _stage_profile(table, j, ck, cur, m[j])
            best_m, best_gap, best_c = _bisect_stage(
                qc[j], table.quantized_columns[j], d, base, target, tol,
                orders[j], starts[j], csuf)
            if best_m is not None and best_m != m[j]:
                changed = True
                m[j] = best_m
                codes = ck | ((fire[j] >= int(best_m)).astype(dt) << dt(j))
                cur = best_c
            if best_gap <= tol:
                converged = True
                break
        if converged or not changed:
            break
    return codes, converged
