"""Property tests of the core maths against float64 brute force (hypothesis).

Covered: the exit heads' distance kernels (Euclidean with and without eq. 4, whitened), the
threshold evaluation of :class:`ExitTable`, :func:`cumulative_cost`, and ``stages=None``
estimators against ``NearestCentroid`` and brute force; data offset by 1e4, near-duplicate class
means and a class whose samples all equal its mean.

Tolerances (every float comparison states one, derived from the data; they hold for any thread
count and summation order). Let ``m`` be the mean of a head's class means (as stored), ``S²``
the largest squared distance of a mean to ``m`` and ``eps`` the machine epsilon of the
arithmetic's dtype.

* Euclidean: a head computes ``||x - c||²`` as ``||x'||² - 2 x'·c' + ||c'||²`` on ``x' = x - e``,
  ``c' = c - e``, where ``e`` is the origin or, when ``||m|| > 256 S`` (``ExitHead.centred``),
  one of the class means. Then ``||x'||² + ||c'||² <= 2 (||x - m||² + R S²)`` with ``R = 3``
  (centred) or ``2^17 + 1`` (not: ``||m||² <= 2^16 S²``), and the expansion rounds to at most a
  few ``D eps`` times that: ``tol_d2 = 8 (D + 4) eps (||x - m||² + R S²)``. It is relative to
  the spread of the data around the class means, never to the offset they share (the
  uncentred expansion's error, ``eps (||x||² + ||c||²)``, is 1e8 times larger at offset 1e4
  and fails these tests). For the distance itself ``|Δd| <= 2 tol_d2 / (d + sqrt(tol_d2))``.
* Whitened: the coefficients ``W = Σ⁻¹ c`` carry the offset, so their rounding (solve, storage)
  is relative to ``||Σ⁻¹|| (||m|| + S)``; the scores' error is bounded by ``16 D κ eps ||Σ⁻¹||
  (||x - m|| + r S) (||x - m|| + ||m|| + r S)`` with ``r = 2`` (centred) or ``257`` (κ the
  condition number of the shrunk covariance): the spread times the offset, never the offset
  squared.
* Estimators: the bounds for a head that is not centred (they hold in both cases).
* A softmax moves each probability by at most twice the largest change of its logits.
* A prediction is compared only where the reference margin exceeds twice the bound, so a tie
  within rounding never decides a test.
"""

import warnings

import numpy as np
import pytest

pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from sklearn.neighbors import NearestCentroid  # noqa: E402

from sklearn_e2cm import EarlyExitClassMeans  # noqa: E402
from sklearn_e2cm._thresholds import ExitTable, cumulative_cost  # noqa: E402
from sklearn_e2cm._thresholds.table import GRID  # noqa: E402
from sklearn_e2cm.exits.class_means import (  # noqa: E402
    ExitHead,
    normalized_head,
    whitened_head,
)

try:
    import torch
except ImportError:  # the numpy properties run without torch
    torch = None

FAST = settings(max_examples=40, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
SLOWER = settings(max_examples=12, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow])

BACKENDS = ["numpy", pytest.param("torch", marks=pytest.mark.skipif(
    torch is None, reason="needs torch"))]


# ----------------------------------------------------------------------------- data
def _problem(seed, K, D, per_class, offset, log_spread, log_scatter, dtype=np.float64):
    """Class means ``offset + spread * N(0, 1)`` (near-duplicates for a small spread), rows
    around them with scatter ``spread * 10**log_scatter``; class 0 has zero scatter.

    Returns the float64 means and the rows ``X`` (in ``dtype``) with their labels.
    """
    rng = np.random.default_rng(seed)
    spread = 10.0 ** log_spread
    base = offset * rng.choice([-1.0, 1.0], D) * rng.uniform(0.5, 1.5, D)
    means = base + spread * rng.normal(size=(K, D))
    y = np.repeat(np.arange(K), per_class)
    X = means[y] + spread * 10.0 ** log_scatter * rng.normal(size=(y.shape[0], D))
    X[y == 0] = means[0]
    return means, X.astype(dtype), y


problems = dict(
    seed=st.integers(0, 2**32 - 1),
    K=st.integers(2, 5),
    D=st.integers(1, 6),
    per_class=st.integers(1, 6),
    offset=st.sampled_from([0.0, 1e4]),
    log_spread=st.floats(-5.0, 1.0),
    log_scatter=st.floats(-3.0, 1.0),
)


def _as(backend, A):
    return torch.as_tensor(A) if backend == "torch" else A


def _numpy(A):
    return A.numpy() if torch is not None and isinstance(A, torch.Tensor) else np.asarray(A)


def _spread(C):
    """``m`` (mean of the means) and ``S²`` (largest squared distance of a mean to it)."""
    m = C.mean(axis=0)
    return m, float(((C - m) ** 2).sum(axis=1).max())


def _centred(C):
    """``ExitHead.centred``'s rule: ``||m|| > 256 S``."""
    m, S2 = _spread(C)
    return bool(m @ m > 2.0**16 * S2)


def _euclid_bound(X, C, eps, centred=False):
    """``tol_d2`` of every (row, class) pair (see the module docstring)."""
    m, S2 = _spread(C)
    D = C.shape[1]
    R = 3 if centred else 2**17 + 1
    rows = ((X - m) ** 2).sum(axis=1)
    return np.broadcast_to((8 * (D + 4) * eps * (rows + R * S2))[:, None],
                           (X.shape[0], C.shape[0]))


def _distance_bound(d_ref, tol_d2):
    """``|Δd| <= 2 tol_d2 / (d + sqrt(tol_d2))`` (0 where the bound on d² is 0)."""
    den = d_ref + np.sqrt(tol_d2)
    return np.divide(2 * tol_d2, den, out=np.zeros_like(den), where=den > 0)


def _brute_d2(X, C):
    return ((X[:, None, :] - C[None, :, :]) ** 2).sum(axis=-1)


def _softmax64(Z):
    E = np.exp(Z - Z.max(axis=1, keepdims=True))
    return E / E.sum(axis=1, keepdims=True)


def _clear(Z_ref, tol, largest=True):
    """Rows whose best reference score beats the runner-up by more than twice the bound."""
    S = Z_ref if largest else -Z_ref
    if S.shape[1] < 2:
        return np.ones(S.shape[0], bool)
    top2 = np.sort(S, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0] > 2 * np.max(tol, axis=1)


def _within(err, tol, what):
    """``err <= tol`` everywhere (broadcast), reporting the worst offender."""
    err, tol = np.broadcast_arrays(np.abs(np.asarray(err, dtype=np.float64)),
                                   np.asarray(tol, dtype=np.float64))
    bad = ~(err <= tol)
    if bad.any():
        i = np.flatnonzero(bad.ravel())[np.argmax((err - tol)[bad])]
        raise AssertionError(f"{what}: {int(bad.sum())} of {err.size} over the bound; "
                             f"error {err.flat[i]:.3e} > {tol.flat[i]:.3e}")


def _check_probabilities(P, eps):
    P = _numpy(P).astype(np.float64)
    assert np.all(np.isfinite(P))
    assert np.all((P >= 0) & (P <= 1))
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=0, atol=4 * P.shape[1] * eps)
    return P


# -------------------------------------------------------------- Euclidean kernel and eq. 4
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@FAST
@given(**problems)
def test_euclidean_distances_match_brute_force(backend, dtype, seed, K, D, per_class, offset,
                                               log_spread, log_scatter):
    means, X, y = _problem(seed, K, D, per_class, offset, log_spread, log_scatter, dtype)
    head = ExitHead(means, dtype=dtype)
    C = head.means.astype(np.float64)  # the means as the head holds them
    X[y == 0] = head.means[0]  # the zero-scatter class: exactly its (stored) mean
    X64 = X.astype(np.float64)
    eps = np.finfo(dtype).eps
    d2_ref = _brute_d2(X64, C)
    assert head.centred == _centred(C)
    tol_d2 = _euclid_bound(X64, C, eps, head.centred)
    d = _numpy(head.distances(_as(backend, X))).astype(np.float64)
    assert np.all(np.isfinite(d)) and np.all(d >= 0)
    d_ref = np.sqrt(d2_ref)
    tol_d = _distance_bound(d_ref, tol_d2)
    _within(d - d_ref, tol_d, "distances")
    # a row equal to its class mean is at distance 0 from it, up to the bound
    zero = y == 0
    _within(d[zero, 0], np.sqrt(tol_d2[zero, 0]), "distance of a row to its own mean")
    # nearest mean wherever the reference margin is clear; the zero-scatter rows are class 0
    clear = _clear(d2_ref, tol_d2, largest=False)
    np.testing.assert_array_equal(d[clear].argmin(axis=1), d2_ref[clear].argmin(axis=1))
    assert np.all(d2_ref[zero & clear].argmin(axis=1) == 0)
    # exit scores -d (<= 0) and probabilities (eq. 5): a distribution over the classes
    S = _numpy(head.scores(_as(backend, X)))
    assert np.all(S <= 0)
    P = _check_probabilities(head.proba(_as(backend, X)), eps)
    tol_P = 2 * tol_d.max(axis=1) + 8 * K * eps * (1 + d_ref.max(axis=1))
    _within(P - _softmax64(-d_ref), tol_P[:, None], "probabilities")


@pytest.mark.parametrize("backend", BACKENDS)
@FAST
@given(**problems)
def test_eq4_normalised_head_matches_brute_force(backend, seed, K, D, per_class, offset,
                                                 log_spread, log_scatter):
    means, X, y = _problem(seed, K, D, per_class, offset, log_spread, log_scatter)
    eps = np.finfo(np.float64).eps
    d_tune = ExitHead(means).distances(_as(backend, X))
    head, P_tune = normalized_head(means, _numpy(d_tune), normalize=True)
    d2_ref = _brute_d2(X, means)
    d_ref = np.sqrt(d2_ref)
    tol_d2 = _euclid_bound(X, means, eps, head.centred)
    tol_d = _distance_bound(d_ref, tol_d2)
    s_ref = d_ref.mean(axis=0)  # eq. 4: mean distance of the tuning rows to each class
    tol_s = tol_d.mean(axis=0) + 4 * eps * s_ref
    _within(head.scale - np.where(s_ref > 0, s_ref, 1.0), tol_s, "eq. 4 scales")
    assume(np.all(s_ref > 4 * tol_s))  # a scale within rounding of 0 has no relative bound
    Z_ref = -d_ref / s_ref
    tol_Z = tol_d / s_ref + d_ref * tol_s / (s_ref * (s_ref - tol_s)) + 4 * eps * np.abs(Z_ref)
    Z = _numpy(head.scores(_as(backend, X)))
    _within(Z - Z_ref, tol_Z, "eq. 4 scores")
    P = _check_probabilities(head.proba(_as(backend, X)), eps)
    tol_P = 2 * tol_Z.max(axis=1) + 8 * K * eps
    _within(P - _softmax64(Z_ref), tol_P[:, None], "probabilities")
    np.testing.assert_allclose(P_tune, P, rtol=0, atol=8 * K * eps)  # tuning = inference
    clear = _clear(Z_ref, tol_Z)
    np.testing.assert_array_equal(P[clear].argmax(axis=1), Z_ref[clear].argmax(axis=1))


# ------------------------------------------------------------------------ whitened kernel
def _covariance(seed, D, scale, log_cond):
    """A symmetric positive-definite matrix with eigenvalues ``scale² · [10**-log_cond, 1]``."""
    rng = np.random.default_rng(seed + 1)
    Q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    ev = scale**2 * 10.0 ** (-log_cond * rng.random(D))
    return (Q * ev) @ Q.T


def _whitened_reference(X, C, shrunk, centred=False):
    """``-½ (x - c_k)ᵀ Σ⁻¹ (x - c_k)`` on the differences (no cancellation), and the bound
    on a head's error per row (see the module docstring)."""
    D = C.shape[1]
    diff = X[:, None, :] - C[None, :, :]
    L_ref = -0.5 * np.einsum("nkd,nkd->nk", diff,
                             np.linalg.solve(shrunk, diff[..., None])[..., 0])
    ev = np.linalg.eigvalsh(shrunk)
    kappa, inv_norm = ev[-1] / ev[0], 1.0 / ev[0]
    m, S2 = _spread(C)
    S, rows = np.sqrt(S2), np.sqrt(((X - m) ** 2).sum(axis=1))
    eps = np.finfo(np.float64).eps
    r = 2 if centred else 257
    tol = 16 * D * kappa * eps * inv_norm * (rows + r * S) * (rows + np.linalg.norm(m) + r * S)
    return L_ref, tol


@pytest.mark.parametrize("backend", BACKENDS)
@FAST
@given(**problems, log_cond=st.floats(0.0, 3.0), shrinkage=st.floats(0.0, 1.0))
def test_whitened_scores_match_brute_force(backend, seed, K, D, per_class, offset, log_spread,
                                           log_scatter, log_cond, shrinkage):
    means, X, y = _problem(seed, K, D, per_class, offset, log_spread, log_scatter)
    eps = np.finfo(np.float64).eps
    cov = _covariance(seed, D, 10.0 ** (log_spread + log_scatter), log_cond)
    head, a = whitened_head(means, cov, shrinkage=shrinkage)
    assert a == shrinkage
    shrunk = (1 - a) * cov + a * np.trace(cov) / D * np.eye(D)
    assert head.centred == _centred(means)
    L_ref, tol_L = _whitened_reference(X, means, shrunk, head.centred)
    tol_L = np.broadcast_to(tol_L[:, None], L_ref.shape)
    # the scores equal L_ref up to a constant per row: compare the centred scores
    Z = _numpy(head.scores(_as(backend, X)))
    centred = lambda A: A - A.mean(axis=1, keepdims=True)  # noqa: E731
    _within(centred(Z) - centred(L_ref), 2 * tol_L, "whitened scores")
    P = _check_probabilities(head.proba(_as(backend, X)), eps)
    _within(P - _softmax64(L_ref), 4 * tol_L.max(axis=1)[:, None] + 8 * K * eps,
            "probabilities")
    clear = _clear(L_ref, 2 * tol_L)
    np.testing.assert_array_equal(P[clear].argmax(axis=1), L_ref[clear].argmax(axis=1))


def test_whitened_head_without_any_scatter_is_nearest_mean():
    """Every class's rows equal its mean: the pooled covariance is rounding only."""
    C = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]) + 1e4
    y = np.repeat([0, 1, 2], 5)
    for offset in (0.0, 1e4):
        clf = EarlyExitClassMeans(metric="mahalanobis").fit(C[y] - 1e4 + offset, y)
        P = clf.predict_proba(C[y] - 1e4 + offset)
        assert np.all(np.isfinite(P)) and clf.shrinkage_ == [1.0]
        np.testing.assert_array_equal(P.argmax(axis=1), y)


# --------------------------------------------------------------- threshold evaluation, costs
def _brute_costs(stage_flops, exit_flops, T, last_head):
    M = len(stage_flops)
    if M == 1:
        return np.ones(1)
    total = 0.0
    for c in stage_flops:
        total += c
    on = [t < 1.0 for t in T] + [last_head]
    out, run = [], 0.0
    for j in range(M):
        run += stage_flops[j] + (exit_flops[j] if on[j] else 0.0)
        out.append(run / total)
    return np.array(out)


levels = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])  # ties between rows and thresholds


@FAST
@given(data=st.data(), N=st.integers(1, 12), M=st.integers(1, 5), weighted=st.booleans(),
       last_head=st.booleans())
def test_threshold_evaluation_matches_a_loop(data, N, M, weighted, last_head):
    unit = st.one_of(levels, st.floats(0.0, 1.0))
    conf = np.array(data.draw(st.lists(unit, min_size=N * M, max_size=N * M))).reshape(N, M)
    correct = np.array(data.draw(st.lists(st.booleans(), min_size=N * M, max_size=N * M)))
    correct = correct.reshape(N, M)
    pos = st.floats(1e-3, 1e3)
    c = data.draw(st.lists(pos, min_size=M, max_size=M))
    e = data.draw(st.lists(st.floats(0.0, 1e2), min_size=M, max_size=M))
    w = np.array(data.draw(st.lists(pos, min_size=N, max_size=N))) if weighted else None
    table = ExitTable(conf, correct, c, e, last_head, w)
    T = np.array(data.draw(st.lists(unit, min_size=M - 1, max_size=M - 1)))
    # brute force: the first stage whose confidence exceeds its threshold, else the last
    exits = np.full(N, M - 1)
    for i in range(N):
        for j in range(M - 1):
            if conf[i, j] > T[j]:
                exits[i] = j
                break
    cost_vec = _brute_costs(c, e, list(T), last_head)
    wn = np.full(N, 1.0 / N) if w is None else w / w.sum()
    cost = sum(wn[i] * cost_vec[exits[i]] for i in range(N))
    score = sum(wn[i] * correct[i, exits[i]] for i in range(N))
    np.testing.assert_array_equal(table.exit_stages(T), exits)
    np.testing.assert_allclose(table.costs(T), cost_vec, rtol=4 * M * np.finfo(float).eps)
    got_cost, got_score = table.evaluate(T)
    assert abs(got_cost - cost) <= 8 * N * M * np.finfo(float).eps * max(1.0, cost)
    assert abs(got_score - score) <= 8 * N * np.finfo(float).eps
    assert min(cost_vec) - 1e-12 <= got_cost <= max(cost_vec) + 1e-12
    assert 0.0 <= got_score <= 1.0 + 1e-12
    # thresholds on the 1/GRID grid: conf > m / GRID, evaluated on quantised columns
    if M > 1:
        g = np.array(data.draw(st.lists(st.integers(0, GRID), min_size=M - 1, max_size=M - 1)))
        fire = conf[:, :-1] > g[None, :] / GRID
        want = np.where(fire.any(axis=1), fire.argmax(axis=1), M - 1)
        np.testing.assert_array_equal(table.exits_of_codes(table.exit_codes(grid_index=g)),
                                      want)


@settings(max_examples=200, deadline=None, database=None)
@given(stage_flops=st.lists(st.floats(1e-6, 1e12), min_size=1, max_size=40),
       data=st.data(), last_head=st.booleans())
def test_cumulative_cost_of_the_base_model_is_exactly_one(stage_flops, data, last_head):
    M = len(stage_flops)
    exit_flops = data.draw(st.lists(st.floats(0.0, 1e12), min_size=M, max_size=M))
    off = cumulative_cost(stage_flops, exit_flops, np.zeros(M - 1, bool), last_head=False)
    assert off[-1] == 1.0  # every head off, the base model's classifier decides: exactly 1
    assert np.all(np.diff(off) >= 0) and np.all(off > 0)
    active = np.array(data.draw(st.lists(st.booleans(), min_size=M - 1, max_size=M - 1)),
                      dtype=bool)
    on = cumulative_cost(stage_flops, exit_flops, active, last_head)
    ref = _brute_costs(stage_flops, exit_flops, [0.0 if a else 1.0 for a in active], last_head)
    np.testing.assert_allclose(on, ref, rtol=4 * M * np.finfo(float).eps)
    assert np.all(np.diff(on) >= 0) and np.all(on >= off)
    both = cumulative_cost(stage_flops, exit_flops, np.stack([active, ~active]), last_head)
    np.testing.assert_array_equal(both[0], on)  # one vector or a matrix of them: same rows


# ------------------------------------------------- estimators on offset, near-duplicate data
def _mean_bound(X, y):
    """Rounding of a streamed class mean: the sums around a shift, then the shift added."""
    eps = np.finfo(np.float64).eps
    R = np.abs(X - X.mean(axis=0)).max()
    return 16 * eps * (X.shape[0] * R + np.abs(X).max())


@FAST
@given(**problems)
@example(seed=1, K=3, D=4, per_class=6, offset=1e4, log_spread=-4.5, log_scatter=-0.7)
def test_single_stage_is_nearest_centroid(seed, K, D, per_class, offset, log_spread,
                                          log_scatter):
    """``stages=None, normalize=False``: the nearest class mean (documented: a nearest-centroid
    classifier), as ``NearestCentroid`` predicts wherever neither is within rounding of a tie."""
    _, X, y = _problem(seed, K, D, per_class, offset, log_spread, log_scatter)
    eps = np.finfo(np.float64).eps
    clf = EarlyExitClassMeans(normalize=False).fit(X, y)
    with warnings.catch_warnings():  # its spread statistics warn on one row per class
        warnings.simplefilter("ignore")
        nc = NearestCentroid().fit(X, y)
    C = np.array([X[y == k].mean(axis=0) for k in range(K)])
    tol_c = _mean_bound(X, y)
    np.testing.assert_allclose(clf.class_means_[0], C, rtol=0, atol=tol_c)
    np.testing.assert_allclose(nc.centroids_, C, rtol=0, atol=tol_c)
    d2_ref = _brute_d2(X, C)
    # the fitted means differ from C by tol_c: |Δd²| <= 2 d √D tol_c + D tol_c²
    shift = 2 * np.sqrt(d2_ref * D) * tol_c + D * tol_c**2
    ours = _euclid_bound(X, C, eps) + shift
    pred = clf.predict(X)
    clear = _clear(d2_ref, ours, largest=False)
    np.testing.assert_array_equal(pred[clear], d2_ref[clear].argmin(axis=1))
    assert np.all(pred[clear & (y == 0)] == 0)  # the zero-scatter class keeps its rows
    # NearestCentroid expands ||x||² - 2x·c + ||c||² without centring: its own bound
    theirs = 8 * (D + 4) * eps * ((X**2).sum(axis=1)[:, None] + (C**2).sum(axis=1)[None, :])
    both = clear & _clear(d2_ref, theirs + shift, largest=False)
    np.testing.assert_array_equal(pred[both], nc.predict(X)[both])
    P = _check_probabilities(clf.predict_proba(X), eps)
    np.testing.assert_array_equal(clf.classes_[P.argmax(axis=1)], pred)
    assert np.all(clf.route(X).flops == 1.0)


@FAST
@given(**problems)
@example(seed=1, K=3, D=4, per_class=6, offset=1e4, log_spread=-4.5, log_scatter=-0.7)
def test_single_stage_with_eq4_is_nearest_normalised_mean(seed, K, D, per_class, offset,
                                                          log_spread, log_scatter):
    """The default ``normalize=True``: the class minimising ``d_k / s_k`` (eq. 4), with the
    scales the mean distances of the training rows (the tuning rows without ``calibration``)."""
    _, X, y = _problem(seed, K, D, per_class, offset, log_spread, log_scatter)
    eps = np.finfo(np.float64).eps
    clf = EarlyExitClassMeans().fit(X, y)
    C = np.array([X[y == k].mean(axis=0) for k in range(K)])
    tol_c = _mean_bound(X, y)
    d_ref = np.sqrt(_brute_d2(X, C))
    tol_d2 = _euclid_bound(X, C, eps)
    tol_d = _distance_bound(d_ref, tol_d2) + np.sqrt(D) * tol_c
    s_ref = d_ref.mean(axis=0)
    tol_s = tol_d.mean(axis=0) + 4 * eps * s_ref
    _within(clf.distance_scale_[0] - np.where(s_ref > 0, s_ref, 1), tol_s, "eq. 4 scales")
    assume(np.all(s_ref > 4 * tol_s))
    Z_ref = -d_ref / s_ref
    tol_Z = tol_d / s_ref + d_ref * tol_s / (s_ref * (s_ref - tol_s)) + 4 * eps * np.abs(Z_ref)
    P = _check_probabilities(clf.predict_proba(X), eps)
    _within(P - _softmax64(Z_ref), 2 * tol_Z.max(axis=1)[:, None] + 8 * K * eps,
            "probabilities")
    clear = _clear(Z_ref, tol_Z)
    np.testing.assert_array_equal(clf.predict(X)[clear], Z_ref[clear].argmax(axis=1))


@SLOWER
@given(**problems, log_cond=st.floats(0.0, 2.0))
@example(seed=1, K=3, D=4, per_class=6, offset=1e4, log_spread=-4.5, log_scatter=-0.7, log_cond=1.0)
def test_single_stage_whitened_matches_brute_force(seed, K, D, per_class, offset, log_spread,
                                                   log_scatter, log_cond):
    """``metric="mahalanobis"``: the posterior of the shrunk pooled covariance, on the fitted
    statistics (means and covariance checked against brute force first)."""
    means, _, _ = _problem(seed, K, D, per_class, offset, log_spread, log_scatter)
    rng = np.random.default_rng(seed + 2)
    scale = 10.0 ** (log_spread + log_scatter)
    L = np.linalg.cholesky(_covariance(seed, D, scale, log_cond))
    y = np.repeat(np.arange(K), per_class + 2)
    X = means[y] + rng.normal(size=(y.shape[0], D)) @ L.T
    X[y == 0] = means[0]
    eps = np.finfo(np.float64).eps
    clf = EarlyExitClassMeans(metric="mahalanobis").fit(X, y)
    C = np.array([X[y == k].mean(axis=0) for k in range(K)])
    np.testing.assert_allclose(clf.class_means_[0], C, rtol=0, atol=_mean_bound(X, y))
    Zc = X - C[y]
    cov_ref = Zc.T @ Zc / X.shape[0]
    cov = clf.class_statistics_.stages[0].within_class_covariance()
    R2 = ((X - X.mean(axis=0)) ** 2).sum(axis=1).max()
    np.testing.assert_allclose(cov, cov_ref, rtol=0, atol=8 * X.shape[0] * eps * R2)
    a = clf.shrinkage_[0]
    if a == 1.0 and np.trace(cov) / D <= 2**10 * eps * _spread(clf.class_means_[0])[1]:
        return  # no scatter beyond rounding: the nearest-mean fallback, tested above
    shrunk = (1 - a) * cov + a * np.trace(cov) / D * np.eye(D)
    assume(np.linalg.eigvalsh(shrunk)[0] > 0)
    L_ref, tol_L = _whitened_reference(X, clf.class_means_[0], shrunk)
    P = _check_probabilities(clf.predict_proba(X), eps)
    _within(P - _softmax64(L_ref), 4 * tol_L[:, None] + 8 * K * eps, "probabilities")
    clear = _clear(L_ref, np.broadcast_to(2 * tol_L[:, None], L_ref.shape))
    np.testing.assert_array_equal(clf.predict(X)[clear], L_ref[clear].argmax(axis=1))


def test_offset_near_duplicate_means_example():
    """A fixed case the uncentred expansion got wrong: means 1e-4 apart at offset 1e4, scatter
    2e-5 (float64). Without centring half of the predictions changed when the data were moved
    by 1e4; now the estimator is translation invariant and agrees with brute force on every
    row clear of rounding (nearly all)."""
    rng = np.random.default_rng(0)
    K, D, n = 3, 6, 300
    means = 1e-4 * rng.normal(size=(K, D))
    y = np.repeat(np.arange(K), n // K)
    X0 = means[y] + 2e-5 * rng.normal(size=(n, D))
    eps = np.finfo(np.float64).eps
    for metric in ("euclidean", "mahalanobis"):
        near = EarlyExitClassMeans(metric=metric).fit(X0, y)
        far = EarlyExitClassMeans(metric=metric).fit(X0 + 1e4, y)
        P0, P1 = near.predict_proba(X0), far.predict_proba(X0 + 1e4)
        # the means themselves round to eps * 1e4 = 2e-12 at the offset, 2e-8 of their
        # spread: the probabilities (logits of order 1) agree to 50 times that
        np.testing.assert_allclose(P1, P0, rtol=0, atol=1e-6)
        assert np.mean(far.predict(X0 + 1e4) == near.predict(X0)) >= 0.99
    X = X0 + 1e4
    clf = EarlyExitClassMeans(normalize=False).fit(X, y)
    C = np.array([X[y == k].mean(axis=0) for k in range(K)])
    d2_ref = _brute_d2(X, C)
    tol = _euclid_bound(X, C, eps) + 2 * np.sqrt(d2_ref * D) * _mean_bound(X, y)
    clear = _clear(d2_ref, tol, largest=False)
    assert clear.mean() >= 0.95
    np.testing.assert_array_equal(clf.predict(X)[clear], d2_ref[clear].argmin(axis=1))
