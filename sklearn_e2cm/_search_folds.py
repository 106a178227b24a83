"""The per-fold work of :class:`~sklearn_e2cm.FlopBudgetSearchCV`.

One fold fits the estimator's exits on its training rows (or reads their stage
vectors from a shared pass), sweeps every FLOP target on the estimator's
tuning table, keeps the upper concave hull and serves each target from it,
then routes the held-out rows as the fitted estimator would and scores them.
"""

import time

import numpy as np
from scipy.stats import rankdata
from sklearn.base import clone, is_classifier
from sklearn.utils._indexing import _safe_indexing

from ._exit_estimator import (
    exit_table_from_source,
    routing_uniforms,
    sweep_resolution_of,
    sweep_seed_of,
    tuning_table_of,
)
from ._scoring import metric_of, metric_scores
from ._thresholds import (
    evaluate_mixtures,
    mixture_exits,
    mixture_values,
    sweep_with_extremes,
    time_sharing,
    served_hull,
)
from .early_exit import fit_on_shared_rows

__all__ = ["run_fold", "format_results", "scored_sweep", "serve_targets", "operating_points", "tuning_grid",
           "tuning_table", "evaluation_table", "reset_operating_params", "fit_estimator"]


def _table_fn(est, shared):
    """``table(data, y, w)``: ``est``'s exit table of ``data`` (X, or row indices of ``shared``)."""
    if shared is None:
        return lambda data, y, w: est.exit_table(data, y, sample_weight=w)
    return lambda rows, y, w: exit_table_from_source(
        est, shared.source(np.asarray(rows), None, est.batch_size), shared.context, y, w)


def tuning_table(est, X, y, sample_weight, scoring, shared=None):
    """The exit table the thresholds are tuned on, with the right correctness."""
    table = _table_fn(est, shared)
    if scoring.kind == "accuracy":
        tuned = tuning_table_of(est)
        if tuned is not None and is_classifier(est):
            return tuned  # what fit computed: the estimator's own tuning data
        return table(X, y, sample_weight)
    if scoring.kind == "agreement":
        return table(X, None, sample_weight)
    return table(X, y if is_classifier(est) else None, sample_weight)


def evaluation_table(est, X, y, sample_weight, scoring, shared=None):
    table = _table_fn(est, shared)
    if scoring.kind == "agreement":
        return table(X, None, sample_weight)
    if scoring.kind == "accuracy" or is_classifier(est):
        return table(X, y, sample_weight)
    return table(X, None, sample_weight)


def scored_sweep(table, targets, method, seed, scoring, y, sample_weight=None, progress=None):
    """Sweep ``targets`` on ``table`` and add the two extremes.

    Returns (targets, thresholds, costs, scores) with two extra rows: every
    sample at the first exit, and the base model (target NaN).
    """
    tg, T, c, s = sweep_with_extremes(table, targets, method=method, random_state=seed,
                                      progress=progress)
    if scoring.kind == "metric":
        s = metric_scores(table, T, y, scoring, sample_weight)
    return tg, T, c, s


def serve_targets(hull_costs, targets):
    """Time-sharing mixture (vertex indices, weights) served for each target."""
    return [time_sharing(hull_costs, t) for t in targets]


def operating_points(c, s, T, targets, points):
    """``(rows, mixtures)``: the swept rows each target is served from.

    ``points=False`` (the estimator's ``threshold_search="hull"`` or
    ``"bisect-hull"``): the rows of the served hull (the upper concave hull
    and the base model, :func:`~sklearn_e2cm._thresholds.served_hull`), each
    target served by time sharing between two of them. ``points=True``
    (``threshold_search="bisect"``, whose fit runs the search at its target
    only): the sweep ran on ``targets`` themselves, and target ``p`` is served
    by its own row ``p``. ``mixtures`` index into ``rows``.
    """
    if points:
        P = len(targets)
        return np.arange(P), [(np.array([p]), np.array([1.0])) for p in range(P)]
    rows = served_hull(c, s, T)
    return rows, serve_targets(c[rows], targets)


def tuning_grid(est, targets, points=False):
    """Targets to sweep: the estimator's own hull grid when it has one.

    An estimator with ``sweep_resolution`` builds its hull from
    ``linspace(0, 1, sweep_resolution + 1)[1:]`` when fitted; sweeping that grid
    (with the estimator's seed) makes each served target exactly what
    ``fit`` at that ``flops_target`` would serve. With ``points`` (a
    single-target search per target) the served targets themselves.
    """
    if points:
        return targets
    n = sweep_resolution_of(est)
    if n is not None:
        return np.linspace(0.0, 1.0, n + 1)[1:]
    return targets


def run_fold(estimator, X, y, w, train, test, targets, method, scoring, seed, return_train,
          shared=None, points=False):
    """Fit one fold, sweep every target on its tuning table, score on the held-out part.

    The hull is built as the estimator's own ``fit`` builds it (its target
    grid and sweep seed), each target is served from it by time sharing, and
    the held-out part is routed as the fitted estimator's ``route`` would
    route it (each row sent to one vertex by the hash of its content), so
    the scores are those ``GridSearchCV`` over ``flops_target`` would get.

    With ``shared`` (one forward pass over all rows, frozen stages) the fold
    reads its stage vectors from it instead of running the stages.
    """
    est = clone(estimator)
    reset_operating_params(est)
    if shared is None:
        X_tr, X_te = _safe_indexing(X, train), _safe_indexing(X, test)
    else:
        X_tr, X_te = train, test  # row indices into the shared pass
    y_tr = None if y is None else _safe_indexing(y, train)
    y_te = None if y is None else _safe_indexing(y, test)
    w_tr = None if w is None else w[train]
    w_te = None if w is None else w[test]
    t0 = time.perf_counter()
    if shared is None:
        fit_estimator(est, X_tr, y_tr, w_tr)
    else:
        fit_on_shared_rows(est, shared, train)
    tune = tuning_table(est, X_tr, y_tr, w_tr, scoring, shared)
    seed = sweep_seed_of(est, seed)
    tg, T, c, s = scored_sweep(tune, tuning_grid(est, targets, points), method, seed,
                                scoring, y_tr, w_tr)
    hull, mixtures = operating_points(c, s, T, targets, points)
    fit_time = time.perf_counter() - t0
    t0 = time.perf_counter()
    held = evaluation_table(est, X_te, y_te, w_te, scoring, shared)
    M1 = held.n_stages - 1
    base_c, base_s = held.evaluate(np.ones(M1))
    u = routing_uniforms(est, _safe_indexing(X, test) if shared is not None else X_te)
    Th = T[hull]
    if scoring.kind == "metric":
        # non-decomposable: rebuild the routed predictions of each served mixture
        if u is None:
            u = np.random.default_rng(seed).random(held.n_samples)
        rows = np.arange(held.n_samples)
        cache = {}
        test_flops = np.empty(len(mixtures))
        test_score = np.empty(len(mixtures))
        for p, (v, wv) in enumerate(mixtures):
            exits, cost = mixture_exits(held, Th, v, wv, u, cache)
            test_flops[p] = held.weighted_mean(cost)
            test_score[p] = metric_of(held, held.pred_labels[rows, exits], y_te, scoring, w_te)
        base_s = metric_of(held, held.predict_indices(np.ones(M1)), y_te, scoring, w_te)
    else:
        test_flops, test_score = evaluate_mixtures(held, Th, mixtures, u)
    score_time = time.perf_counter() - t0
    out = {
        "test_flops": test_flops,
        "test_score": test_score,
        "base": (base_c, base_s),
        "fit_time": fit_time,
        "score_time": score_time,
    }
    if return_train:
        out["train_flops"] = mixture_values(mixtures, c[hull])
        out["train_score"] = mixture_values(mixtures, s[hull])
    return out


def reset_operating_params(est):
    """The search chooses the operating point: fit the heads only."""
    params = est.get_params(deep=False)
    reset = {k: None for k in ("flops_target", "thresholds") if k in params}
    if reset:
        est.set_params(**reset)


def fit_estimator(est, X, y, sample_weight):
    if sample_weight is None:
        return est.fit(X, y)
    return est.fit(X, y, sample_weight=sample_weight)


# ----------------------------------------------------------------------------- search


def format_results(targets, folds, return_train_score):
    """``cv_results_`` of a search from its per-fold results, one row per FLOP target.

    Parameters
    ----------
    targets : ndarray of shape (P,)
    folds : list of dict
        What :func:`run_fold` returns, per fold.
    return_train_score : bool

    Returns
    -------
    results : dict of ndarray
    """
    P = len(targets)
    n = len(folds)
    res = {}
    for key in ("fit_time", "score_time"):
        v = np.array([f[key] for f in folds])
        res[f"mean_{key}"] = np.full(P, v.mean())
        res[f"std_{key}"] = np.full(P, v.std())
    res["param_flops_target"] = np.ma.MaskedArray(targets.copy(), mask=np.zeros(P, bool))
    res["params"] = [{"flops_target": float(t)} for t in targets]
    sets = ["test"] + (["train"] if return_train_score else [])
    for part in sets:
        for what in ("score", "flops"):
            arr = np.array([f[f"{part}_{what}"] for f in folds])  # (n, P)
            for k in range(n):
                res[f"split{k}_{part}_{what}"] = arr[k]
            res[f"mean_{part}_{what}"] = arr.mean(axis=0)
            res[f"std_{part}_{what}"] = arr.std(axis=0)
            if part == "test" and what == "score":
                res["rank_test_score"] = rankdata(
                    -np.round(arr.mean(axis=0), 12), method="min").astype(np.int32)
    return res
